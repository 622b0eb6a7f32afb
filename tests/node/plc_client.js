// node-opcua client against our simulated PLC: browse, read, subscribe, writes (refused and accepted).
// usage: node plc_client.js URL NAMESPACE_URI MODE(None|SignAndEncrypt|Sign) USER PASSWORD [CERT_PEM KEY_PEM APP_URI]
// prints one JSON object with what it saw.
const opcua = require("node-opcua");
const [url, nsUri, mode, user, password, certFile, keyFile, appUri] = process.argv.slice(2);

function options() {
  const o = {
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 2, initialDelay: 200, maxDelay: 500 },
    securityMode: opcua.MessageSecurityMode[mode],
    securityPolicy: mode === "None" ? opcua.SecurityPolicy.None : opcua.SecurityPolicy.Basic256Sha256,
  };
  if (certFile) Object.assign(o, { certificateFile: certFile, privateKeyFile: keyFile, applicationUri: appUri });
  return o;
}

async function write(session, nodeId, value) {
  const sc = await session.write({ nodeId, attributeId: opcua.AttributeIds.Value,
    value: { value: { dataType: opcua.DataType.Float, value } } });
  return sc.name;
}

async function main() {
  const out = {};
  const client = opcua.OPCUAClient.create(options());
  await client.connect(url);
  const anon = await client.createSession();
  const nsArray = (await anon.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf(nsUri);
  out.ns = ns;
  const id = (s) => `ns=${ns};s=${s}`;
  // browse: Objects -> PLC -> units -> tags
  const plc = await anon.browse({ nodeId: id("PLC"), browseDirection: opcua.BrowseDirection.Forward,
    referenceTypeId: "HierarchicalReferences", includeSubtypes: true, resultMask: 63 });
  out.units = plc.references.map((r) => r.browseName.name).sort();
  let tags = [];
  for (const r of plc.references) {
    const children = await anon.browse({ nodeId: r.nodeId, browseDirection: opcua.BrowseDirection.Forward,
      referenceTypeId: "HasComponent", includeSubtypes: true, nodeClassMask: 2, resultMask: 63 });
    tags = tags.concat(children.references.map((c) => ({ name: c.browseName.name, type: c.typeDefinition.toString() })));
  }
  out.tag_count = tags.length;
  out.analog_items = tags.filter((t) => t.type === "ns=0;i=2368").length;
  const flow = await anon.read({ nodeId: id("ADS.FEED.FLOW"), attributeId: opcua.AttributeIds.Value });
  out.flow = { value: flow.value.value, dataType: opcua.DataType[flow.value.dataType], status: flow.statusCode.name,
               source_age_s: (Date.now() - flow.sourceTimestamp.getTime()) / 1000 };
  const eu = await anon.read({ nodeId: id("ADS.FEED.FLOW.EURange"), attributeId: opcua.AttributeIds.Value });
  out.eurange = { low: eu.value.value.low, high: eu.value.value.high };
  const unit = await anon.read({ nodeId: id("ADS.FEED.FLOW.EngineeringUnits"), attributeId: opcua.AttributeIds.Value });
  out.unit = unit.value.value.displayName.text;
  out.anonymous_write = await write(anon, id("ADS.FEED.FLOW_SP"), 123);
  out.read_only_write = await write(anon, id("ADS.FEED.FLOW"), 1);
  // subscription: heartbeat changes every second
  const sub = opcua.ClientSubscription.create(anon, { requestedPublishingInterval: 200, requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 100, maxNotificationsPerPublish: 100, publishingEnabled: true, priority: 1 });
  const beats = [];
  const item = opcua.ClientMonitoredItem.create(sub, { nodeId: id("Diagnostics.Heartbeat"), attributeId: opcua.AttributeIds.Value },
    { samplingInterval: 200, discardOldest: true, queueSize: 5 }, opcua.TimestampsToReturn.Both);
  item.on("changed", (dv) => beats.push(Number(dv.value.value)));
  await new Promise((r) => setTimeout(r, 2600));
  out.heartbeats = beats;
  await sub.terminate();
  await anon.close();
  // an operator session writes
  const op = await client.createSession({ type: opcua.UserTokenType.UserName, userName: user, password });
  out.operator_write = await write(op, id("ADS.FEED.FLOW_SP"), 123);
  out.out_of_range_write = await write(op, id("ADS.FEED.FLOW_SP"), 9999);
  out.after_refused = (await op.read({ nodeId: id("ADS.FEED.FLOW_SP"), attributeId: opcua.AttributeIds.Value })).value.value;
  out.operator_limit_write = await write(op, id("ADS.BT_LIMIT_SP"), 5);
  await op.close();
  await client.disconnect();
  console.log("RESULT " + JSON.stringify(out));
}
main().then(() => process.exit(0)).catch((e) => { console.error("ERROR " + e.message); process.exit(2); });

// node-opcua as a trainee's HMI on a served training session: log in to the operator server and the
// simulated PLC as a user over Basic256Sha256 SignAndEncrypt, wait for an alarm among the operator
// server's conditions (events after a ConditionRefresh), acknowledge it, then write the corrective
// setpoints to the PLC.
// usage: node trainee_client.js OPERATOR_URL PLC_URL PLC_NS_URI USER PASSWORD CERT_PEM KEY_PEM APP_URI ALARM TAG=VALUE...
// prints one JSON object (RESULT ...) with the status of each step.
const opcua = require("node-opcua");
const [opUrl, plcUrl, plcNs, user, password, certFile, keyFile, appUri, alarmId, ...writes] = process.argv.slice(2);
const FIELDS = ["EventId", "ConditionName", "AckedState.Id", "ActiveState.Id", "ConditionId"];

async function connect(url) {
  const client = opcua.OPCUAClient.create({
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 2, initialDelay: 200, maxDelay: 500 },
    securityMode: opcua.MessageSecurityMode.SignAndEncrypt,
    securityPolicy: opcua.SecurityPolicy.Basic256Sha256,
    certificateFile: certFile, privateKeyFile: keyFile, applicationUri: appUri,
  });
  await client.connect(url);
  const session = await client.createSession({ type: opcua.UserTokenType.UserName, userName: user, password });
  return { client, session };
}

async function waitForAlarm(session, ms) {
  const sub = await session.createSubscription2({ requestedPublishingInterval: 100, requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 200, maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 1 });
  const filter = opcua.constructEventFilter(FIELDS, [opcua.resolveNodeId("ConditionType")]);
  const item = await sub.monitor({ nodeId: opcua.resolveNodeId("Server"), attributeId: opcua.AttributeIds.EventNotifier },
    { samplingInterval: 0, filter, queueSize: 10000, discardOldest: false }, opcua.TimestampsToReturn.Neither);
  let found = null;
  item.on("changed", (values) => {
    const e = {};
    FIELDS.forEach((f, i) => { e[f] = values[i].value; });
    if (e.ConditionName === alarmId && e["ActiveState.Id"] && !e["AckedState.Id"]) found = e;
  });
  await session.call({ objectId: opcua.coerceNodeId("ns=0;i=2782"), methodId: opcua.coerceNodeId("ns=0;i=3875"),
    inputArguments: [{ dataType: opcua.DataType.UInt32, value: sub.subscriptionId }] });
  const t0 = Date.now();
  while (!found && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 50));
  await sub.terminate();
  if (!found) throw new Error(`no ${alarmId} within ${ms} ms`);
  return found;
}

async function main() {
  const out = {};
  const op = await connect(opUrl);
  const ev = await waitForAlarm(op.session, 120000);
  const ack = await op.session.call({ objectId: ev.ConditionId, methodId: opcua.coerceNodeId("ns=0;i=9111"),
    inputArguments: [{ dataType: opcua.DataType.ByteString, value: ev.EventId },
      { dataType: opcua.DataType.LocalizedText, value: { text: "pump trip seen" } }] });
  out.acknowledge = ack.statusCode.name;
  const plc = await connect(plcUrl);
  const nsArray = (await plc.session.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf(plcNs);
  out.writes = {};
  for (const w of writes) {
    const [tag, value] = w.split("=");
    const status = await plc.session.write({ nodeId: `ns=${ns};s=${tag}`, attributeId: opcua.AttributeIds.Value,
      value: { value: { dataType: opcua.DataType.Float, value: Number(value) } } });
    out.writes[tag] = status.name;
  }
  for (const c of [op, plc]) {
    await c.session.close();
    await c.client.disconnect();
  }
  console.log("RESULT " + JSON.stringify(out));
}
main().then(() => process.exit(0)).catch((e) => { console.error("ERROR " + e.message); process.exit(2); });

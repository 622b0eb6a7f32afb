// node-opcua as a standard Alarms & Conditions client of the operator server: log in as a user
// over Basic256Sha256 SignAndEncrypt, subscribe to the Server object's events (OfType ConditionType),
// ConditionRefresh, then acknowledge one alarm with the EventId of its newest event.
// usage: node alarm_client.js URL USER PASSWORD CERT_PEM KEY_PEM APP_URI ALARM_ID
// prints one JSON object (RESULT ...): what arrived before and after the refresh, the answers.
const opcua = require("node-opcua");
const [url, user, password, certFile, keyFile, appUri, alarmId] = process.argv.slice(2);
const FIELDS = ["EventId", "EventType", "ConditionName", "SourceName", "Severity", "Retain", "Message",
  "AckedState.Id", "ActiveState.Id", "ClientUserId", "Comment", "ConditionId"];

function until(pred, ms) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      const v = pred();
      if (v) return resolve(v);
      if (Date.now() - t0 > ms) return reject(new Error("timed out waiting for events"));
      setTimeout(tick, 50);
    };
    tick();
  });
}

async function acknowledge(session, ev, text) {
  const r = await session.call({
    objectId: ev.ConditionId, methodId: opcua.coerceNodeId("ns=0;i=9111"),
    inputArguments: [{ dataType: opcua.DataType.ByteString, value: ev.EventId },
      { dataType: opcua.DataType.LocalizedText, value: { text } }],
  });
  return r.statusCode.name;
}

async function main() {
  const client = opcua.OPCUAClient.create({
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 1, initialDelay: 200, maxDelay: 500 },
    securityMode: opcua.MessageSecurityMode.SignAndEncrypt,
    securityPolicy: opcua.SecurityPolicy.Basic256Sha256,
    certificateFile: certFile, privateKeyFile: keyFile, applicationUri: appUri,
  });
  await client.connect(url);
  const session = await client.createSession({ type: opcua.UserTokenType.UserName, userName: user, password });
  const sub = await session.createSubscription2({ requestedPublishingInterval: 100, requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 200, maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 1 });
  const filter = opcua.constructEventFilter(FIELDS, [opcua.resolveNodeId("ConditionType")]);
  const item = await sub.monitor({ nodeId: opcua.resolveNodeId("Server"), attributeId: opcua.AttributeIds.EventNotifier },
    { samplingInterval: 0, filter, queueSize: 10000, discardOldest: false }, opcua.TimestampsToReturn.Neither);
  const events = [];
  item.on("changed", (values) => {
    const e = {};
    FIELDS.forEach((f, i) => { e[f] = values[i].value; });
    events.push(e);
  });
  await new Promise((r) => setTimeout(r, 500));
  const out = { before_refresh: events.length };
  const refresh = await session.call({ objectId: opcua.coerceNodeId("ns=0;i=2782"),
    methodId: opcua.coerceNodeId("ns=0;i=3875"),
    inputArguments: [{ dataType: opcua.DataType.UInt32, value: sub.subscriptionId }] });
  out.refresh = refresh.statusCode.name;
  const newest = (pred) => events.filter((e) => e.ConditionName === alarmId && pred(e)).pop();
  const ev = await until(() => newest(() => true), 10000);
  await new Promise((r) => setTimeout(r, 300)); // the rest of the refresh
  out.refreshed = [...new Set(events.filter((e) => e.Retain).map((e) => e.ConditionName))].sort();
  out.alarm = { severity: ev.Severity, acked: ev["AckedState.Id"], active: ev["ActiveState.Id"],
    source: ev.SourceName, message: ev.Message && ev.Message.text, type: ev.EventType.toString(),
    condition_id: ev.ConditionId.toString() };
  out.acknowledge = await acknowledge(session, ev, "seen from node-opcua");
  const acked = await until(() => newest((e) => e["AckedState.Id"] === true), 10000);
  out.after = { acked: acked["AckedState.Id"], user: acked.ClientUserId, comment: acked.Comment && acked.Comment.text,
    retain: acked.Retain };
  out.acknowledge_again = await acknowledge(session, acked, "twice");
  out.stale_event_id = await acknowledge(session, { ...acked, EventId: Buffer.from("not-an-event-id") }, "stale");
  await sub.terminate();
  await session.close();
  await client.disconnect();
  console.log("RESULT " + JSON.stringify(out));
}
main().then(() => process.exit(0)).catch((e) => { console.error("ERROR " + e.message); process.exit(2); });

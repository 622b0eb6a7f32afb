// node-opcua client against the operator server of `pilot run`: log in as a user over
// Basic256Sha256 SignAndEncrypt, acknowledge an alarm, then try what that user may not do.
// usage: node operator_client.js URL USER PASSWORD CERT_PEM KEY_PEM APP_URI ALARM_ID
// prints one JSON object (RESULT ...) with the status code and answer of each call.
const opcua = require("node-opcua");
const [url, user, password, certFile, keyFile, appUri, alarmId] = process.argv.slice(2);

async function call(session, ns, method, args) {
  const r = await session.call({
    objectId: `ns=${ns};s=Operator`, methodId: `ns=${ns};s=Operator.${method}`,
    inputArguments: args.map((value) => ({ dataType: opcua.DataType.String, value })),
  });
  const out = r.outputArguments && r.outputArguments.length ? r.outputArguments[0].value : null;
  return { status: r.statusCode.name, answer: out };
}

// a raw service request: the response, or the service fault's status name
function transact(session, request) {
  return new Promise((resolve) => {
    const done = (err, response) => resolve(err ? { fault: err.message } : { response });
    const p = session.performMessageTransaction(request, done);
    if (p && p.then) p.then((r) => done(null, r), done);
  });
}

function verdict(t) {
  if (t.fault) return (t.fault.match(/Bad[A-Za-z]+/) || [t.fault])[0];
  const first = (t.response.results || [])[0];
  return first && first.statusCode ? first.statusCode.name : first ? first.name : "no result";
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
  const nsArray = (await session.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf("urn:pilot-line:operator");
  const out = { ns };
  out.acknowledge = await call(session, ns, "Acknowledge", [alarmId]);
  out.set_mode = await call(session, ns, "SetMode", ["cell1", "auto"]);
  out.missing_argument = await call(session, ns, "Acknowledge", []);
  out.write_modes = (await session.write({ nodeId: `ns=${ns};s=Operator.Modes`, attributeId: opcua.AttributeIds.Value,
    value: { value: { dataType: opcua.DataType.String, value: "{}" } } })).name;
  out.delete_nodes = verdict(await transact(session, new opcua.DeleteNodesRequest({
    nodesToDelete: [{ nodeId: `ns=${ns};s=Operator.SetMode`, deleteTargetReferences: true }] })));
  out.add_nodes = verdict(await transact(session, new opcua.AddNodesRequest({
    nodesToAdd: [{ parentNodeId: `ns=${ns};s=Operator`, referenceTypeId: "ns=0;i=47",
      requestedNewNodeId: `ns=${ns};s=Intruder`, browseName: { namespaceIndex: ns, name: "Intruder" },
      nodeClass: opcua.NodeClass.Object, typeDefinition: "ns=0;i=58" }] })));
  out.acknowledge_after = await call(session, ns, "Acknowledge", [alarmId]);
  await session.close();
  await client.disconnect();
  console.log("RESULT " + JSON.stringify(out));
}
main().then(() => process.exit(0)).catch((e) => { console.error("ERROR " + e.message); process.exit(2); });

// node-opcua client probing the security of our servers: two sessions on one secure channel
// (operator and anonymous), address-space changes by an engineer, the policy and mode in use.
// usage: node server_sec_client.js URL NAMESPACE_URI POLICY MODE OP_USER OP_PASSWORD ENG_USER ENG_PASSWORD WRITE_NODE
//        [CERT_PEM KEY_PEM APP_URI]
// POLICY: None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; MODE: None, Sign, SignAndEncrypt.
// WRITE_NODE: the string identifier of a Float variable the operator may write (e.g. ADS.FEED.FLOW_SP).
// Prints one line "RESULT {json}".
const opcua = require("node-opcua");
const [url, nsUri, policy, mode, opUser, opPassword, engUser, engPassword, writeNode, certFile, keyFile, appUri] =
  process.argv.slice(2);

function options() {
  const o = {
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 1, initialDelay: 200, maxDelay: 500 },
    securityMode: opcua.MessageSecurityMode[mode],
    securityPolicy: opcua.SecurityPolicy[policy],
  };
  if (certFile) Object.assign(o, { certificateFile: certFile, privateKeyFile: keyFile, applicationUri: appUri });
  return o;
}

function statusOf(err) {
  const m = /(Bad[A-Za-z]+)/.exec(err && err.message ? err.message : String(err));
  return m ? m[1] : "error: " + (err && err.message);
}

async function write(session, nodeId, value) {
  try {
    const sc = await session.write({ nodeId, attributeId: opcua.AttributeIds.Value,
      value: { value: { dataType: opcua.DataType.Float, value } } });
    return sc.name;
  } catch (err) {
    return statusOf(err);
  }
}

function transaction(session, request) {
  return new Promise((resolve) => {
    session.performMessageTransaction(request, (err, response) => {
      if (err) return resolve(statusOf(err));
      const sc = response.responseHeader.serviceResult;
      if (sc && sc.value !== 0) return resolve(sc.name);
      const results = (response.results || []).map((r) => (r.statusCode || r).name);
      resolve(results.join(",") || "Good");
    });
  });
}

async function addressSpaceChanges(session, ns, id) {
  const target = id(writeNode);
  return {
    add_nodes: await transaction(session, new opcua.AddNodesRequest({ nodesToAdd: [{
      parentNodeId: "ns=0;i=85", referenceTypeId: "ns=0;i=35", requestedNewNodeId: id("Evil"),
      browseName: { namespaceIndex: ns, name: "Evil" }, nodeClass: opcua.NodeClass.Object,
      typeDefinition: "ns=0;i=61" }] })),
    delete_nodes: await transaction(session, new opcua.DeleteNodesRequest({ nodesToDelete: [
      { nodeId: target, deleteTargetReferences: true }] })),
    add_references: await transaction(session, new opcua.AddReferencesRequest({ referencesToAdd: [{
      sourceNodeId: target, referenceTypeId: "ns=0;i=35", isForward: true, targetNodeId: "ns=0;i=2253",
      targetNodeClass: opcua.NodeClass.Object }] })),
    delete_references: await transaction(session, new opcua.DeleteReferencesRequest({ referencesToDelete: [{
      sourceNodeId: target, referenceTypeId: "ns=0;i=40", isForward: true, targetNodeId: "ns=0;i=63",
      deleteBidirectional: true }] })),
  };
}

async function main() {
  const out = { policy, mode };
  const client = opcua.OPCUAClient.create(options());
  await client.connect(url);
  const op = await client.createSession({ type: opcua.UserTokenType.UserName, userName: opUser, password: opPassword });
  const nsArray = (await op.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf(nsUri);
  const id = (s) => `ns=${ns};s=${s}`;
  out.operator_first = await write(op, id(writeNode), 111);
  // a second session, anonymous, on the same client and so on the same secure channel
  let anon = null;
  try {
    anon = await client.createSession();
  } catch (err) {
    out.anonymous_session = statusOf(err);
  }
  if (anon) {
    out.anonymous_session = "Good";
    out.anonymous_write = await write(anon, id(writeNode), 222);
    out.operator_after_anonymous = await write(op, id(writeNode), 123);  // the newest session does not decide
    out.anonymous_write_again = await write(anon, id(writeNode), 333);
    await anon.close();
  }
  out.value = (await op.read({ nodeId: id(writeNode), attributeId: opcua.AttributeIds.Value })).value.value;
  await op.close();
  const eng = await client.createSession({ type: opcua.UserTokenType.UserName, userName: engUser,
    password: engPassword });
  out.engineer = await addressSpaceChanges(eng, ns, id);
  out.still_there = (await eng.read({ nodeId: id(writeNode), attributeId: opcua.AttributeIds.BrowseName }))
    .value.value.name;
  await eng.close();
  await client.disconnect();
  console.log("RESULT " + JSON.stringify(out));
}
main().then(() => process.exit(0)).catch((e) => { console.error("ERROR " + e.message); process.exit(2); });

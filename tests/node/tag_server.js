// node-opcua server publishing N Float tags T0..T{N-1} (read-only, changing every tick) and M writable
// setpoints SP0..SP{M-1}, in namespace URI, for the bridge tests and the throughput benchmark (Ticks:
// how many times the T* tags changed, so a benchmark knows what was really published).
// usage: node tag_server.js PORT NAMESPACE_URI N M RATE_HZ [PEM_CERT PEM_KEY APP_URI TRUSTED_CLIENT_CERT PKI_DIR]
// env LIMITS="read,write,monitor" sets the server's OperationLimits. Prints "READY" when listening.
const opcua = require("node-opcua");
const [port, nsUri, nStr, mStr, rateStr, certFile, keyFile, appUri, trustFile, pkiDir] = process.argv.slice(2);
const N = Number(nStr), M = Number(mStr), rate = Number(rateStr);

async function main() {
  const limits = (process.env.LIMITS || "0,0,0").split(",").map(Number);
  const opts = {
    port: Number(port), resourcePath: "", maxConnectionsPerEndpoint: 20,
    serverCapabilities: { maxSessions: 20, operationLimits: {
      maxNodesPerRead: limits[0], maxNodesPerWrite: limits[1], maxMonitoredItemsPerCall: limits[2] } },
    securityModes: [opcua.MessageSecurityMode.None], securityPolicies: [opcua.SecurityPolicy.None],
  };
  if (certFile) {
    const cm = new opcua.OPCUACertificateManager({ rootFolder: pkiDir, automaticallyAcceptUnknownCertificate: false });
    await cm.initialize();
    if (trustFile) await cm.trustCertificate(require("fs").readFileSync(trustFile));  // DER
    Object.assign(opts, {
      certificateFile: certFile, privateKeyFile: keyFile, serverCertificateManager: cm,
      serverInfo: { applicationUri: appUri },
      securityModes: [opcua.MessageSecurityMode.SignAndEncrypt, opcua.MessageSecurityMode.Sign],
      securityPolicies: [opcua.SecurityPolicy.Basic256Sha256],
    });
  }
  const server = new opcua.OPCUAServer(opts);
  await server.initialize();
  const ns = server.engine.addressSpace.registerNamespace(nsUri);
  const plc = ns.addObject({ organizedBy: server.engine.addressSpace.rootFolder.objects, browseName: "PLC", nodeId: "s=PLC" });
  const tags = [];
  for (let i = 0; i < N; i++) {
    tags.push(ns.addVariable({ componentOf: plc, browseName: `T${i}`, nodeId: `s=T${i}`, dataType: "Float",
      minimumSamplingInterval: 50, value: { dataType: opcua.DataType.Float, value: 0 } }));
  }
  for (let k = 0; k < M; k++) {
    ns.addVariable({ componentOf: plc, browseName: `SP${k}`, nodeId: `s=SP${k}`, dataType: "Float",
      accessLevel: "CurrentRead | CurrentWrite", userAccessLevel: "CurrentRead | CurrentWrite",
      value: { dataType: opcua.DataType.Float, value: 0 } });
  }
  const ticks = ns.addVariable({ componentOf: plc, browseName: "Ticks", nodeId: "s=Ticks", dataType: "Double",
    value: { dataType: opcua.DataType.Double, value: 0 } });  // how many times T* changed (benchmarks)
  let tick = 0;
  setInterval(() => {
    tick += 1;
    const now = new Date();
    ticks.setValueFromSource({ dataType: opcua.DataType.Double, value: tick }, opcua.StatusCodes.Good, now);
    for (let i = 0; i < N; i++) {
      tags[i].setValueFromSource({ dataType: opcua.DataType.Float, value: (tick * 7 + i) % 1000 }, opcua.StatusCodes.Good, now);
    }
  }, 1000 / rate);
  await server.start();
  console.log("READY");
}
main().catch((e) => { console.log("ERROR " + e.message); process.exit(2); });

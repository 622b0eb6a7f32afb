// node-opcua reference client for the throughput benchmark: subscribe T0..T{N-1}, count changes,
// latency from source timestamp to the 'changed' callback, and this process's CPU share.
// usage: node sub_client.js URL NAMESPACE_URI N SAMPLING_MS WARMUP_S SECONDS ; prints "RESULT {json}"
const opcua = require("node-opcua");
const [url, nsUri, nStr, samplingStr, warmStr, secStr] = process.argv.slice(2);
const N = Number(nStr), sampling = Number(samplingStr), warm = Number(warmStr), secs = Number(secStr);

async function main() {
  const client = opcua.OPCUAClient.create({ endpointMustExist: false, connectionStrategy: { maxRetry: 1 } });
  await client.connect(url);
  const session = await client.createSession();
  const nsArray = (await session.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf(nsUri);
  const sub = await session.createSubscription2({ requestedPublishingInterval: sampling, requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 200, maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 1 });
  let measuring = false, count = 0;
  const lat = [];
  const items = [];
  for (let i = 0; i < N; i++) items.push({ nodeId: `ns=${ns};s=T${i}`, attributeId: opcua.AttributeIds.Value });
  const group = await sub.monitorItems(items, { samplingInterval: sampling, discardOldest: true, queueSize: 2 },
    opcua.TimestampsToReturn.Both);
  group.on("changed", (item, dv) => {
    if (!measuring) return;
    count += 1;
    if (dv.sourceTimestamp) lat.push(Date.now() - dv.sourceTimestamp.getTime());
  });
  await new Promise((r) => setTimeout(r, warm * 1000));
  const c0 = process.cpuUsage(), t0 = Date.now();
  measuring = true;
  await new Promise((r) => setTimeout(r, secs * 1000));
  measuring = false;
  const c1 = process.cpuUsage(c0), dt = (Date.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN);
  console.log("RESULT " + JSON.stringify({ changes_per_s: count / dt, p50_ms: q(0.5), p95_ms: q(0.95),
    cpu: (c1.user + c1.system) / 1e6 / dt }));
  await sub.terminate();
  await session.close();
  await client.disconnect();
}
main().then(() => process.exit(0)).catch((e) => { console.log("ERROR " + e.message); process.exit(2); });

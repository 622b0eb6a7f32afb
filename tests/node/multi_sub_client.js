// node-opcua reference client for the several-PLC throughput benchmark: one session per server,
// each subscribing T0..T{N-1} of its namespace; counts changes, changes lost (tag_server.js sets
// T{i} = (tick*7 + i) % 1000, so the gap between two values received says how many ticks were
// skipped), latency from source timestamp to the 'changed' callback, and this process's CPU share.
// usage: node multi_sub_client.js N SAMPLING_MS WARMUP_S SECONDS URL NAMESPACE_URI [URL NAMESPACE_URI]...
// prints "RESULT {json}" (published_per_s: changes the servers made in the window, from their Ticks)
const opcua = require("node-opcua");
const [nStr, samplingStr, warmStr, secStr, ...servers] = process.argv.slice(2);
const N = Number(nStr), sampling = Number(samplingStr), warm = Number(warmStr), secs = Number(secStr);
const INV7 = 143;  // 7 * 143 = 1001 = 1 (mod 1000)
const state = { measuring: false, count: 0, lost: 0, lat: [] };

function skipped(prev, value) {
  const k = ((((value - prev) % 1000) + 1000) % 1000) * INV7 % 1000;  // ticks from prev to value
  return k > 0 ? k - 1 : 0;
}

async function subscribe(url, nsUri) {
  const client = opcua.OPCUAClient.create({ endpointMustExist: false, connectionStrategy: { maxRetry: 1 } });
  await client.connect(url);
  const session = await client.createSession();
  const nsArray = (await session.read({ nodeId: "ns=0;i=2255", attributeId: opcua.AttributeIds.Value })).value.value;
  const ns = nsArray.indexOf(nsUri);
  if (ns < 0) throw new Error(`${url} has no namespace ${nsUri}`);
  const sub = await session.createSubscription2({ requestedPublishingInterval: sampling, requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 200, maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 1 });
  const items = [];
  for (let i = 0; i < N; i++) items.push({ nodeId: `ns=${ns};s=T${i}`, attributeId: opcua.AttributeIds.Value });
  const group = await sub.monitorItems(items, { samplingInterval: sampling, discardOldest: true, queueSize: 2 },
    opcua.TimestampsToReturn.Both);
  const last = new Map();
  group.on("changed", (item, dv) => {
    const key = item.itemToMonitor.nodeId.value, value = dv.value.value;
    const prev = last.get(key);
    last.set(key, value);
    if (!state.measuring) return;
    state.count += 1;
    if (prev !== undefined) state.lost += skipped(prev, value);
    if (dv.sourceTimestamp) state.lat.push(Date.now() - dv.sourceTimestamp.getTime());
  });
  const ticksNode = `ns=${ns};s=Ticks`;
  const ticks = async () => (await session.read({ nodeId: ticksNode, attributeId: opcua.AttributeIds.Value })).value.value;
  return { client, session, sub, ticks };
}

const sumTicks = async (links) => (await Promise.all(links.map((l) => l.ticks()))).reduce((a, b) => a + b, 0);

async function main() {
  const links = [];
  for (let k = 0; k < servers.length; k += 2) links.push(await subscribe(servers[k], servers[k + 1]));
  await new Promise((r) => setTimeout(r, warm * 1000));
  const ticks0 = await sumTicks(links);
  const c0 = process.cpuUsage(), t0 = Date.now();
  state.measuring = true;
  await new Promise((r) => setTimeout(r, secs * 1000));
  state.measuring = false;
  const c1 = process.cpuUsage(c0), dt = (Date.now() - t0) / 1000;
  const published = (await sumTicks(links) - ticks0) * N / dt;
  const lat = state.lat.sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN);
  console.log("RESULT " + JSON.stringify({ changes_per_s: state.count / dt, published_per_s: published,
    lost: state.lost, p50_ms: q(0.5),
    p95_ms: q(0.95), cpu: (c1.user + c1.system) / 1e6 / dt }));
  for (const { client, session, sub } of links) {
    await sub.terminate();
    await session.close();
    await client.disconnect();
  }
}
main().then(() => process.exit(0)).catch((e) => { console.log("ERROR " + e.message); process.exit(2); });

"""1,000 connects/s through the connect hook: N processes each open M WebSocket connections
paced over one second, against a release gateway whose connect hook is a stdlib HTTP server.
Prints the achieved rate and the gateway's open descriptors."""
import asyncio, json, multiprocessing, os, sys, time
from websockets.asyncio.client import connect

ADDR = sys.argv[1]; PROCS = int(sys.argv[2]); PER = int(sys.argv[3]); PID = int(sys.argv[4])

async def worker(q):
    start = time.time()
    conns = []
    for i in range(PER // 25):
        conns += await asyncio.gather(*[connect(f"ws://{ADDR}/ws", subprotocols=["firetower.json"]) for _ in range(25)])
        await asyncio.sleep(max(0, start + (i + 1) * 25 / PER - time.time()))
    took = time.time() - start
    ok = 0
    for ws in conns:
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        ok += json.loads(await ws.recv())["op"] == "pong"
    q.put((took, ok))
    await asyncio.sleep(2)

def run(q):
    asyncio.run(worker(q))

if __name__ == "__main__":
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=run, args=(q,)) for _ in range(PROCS)]
    t = time.time()
    for p in ps: p.start()
    res = [q.get() for _ in ps]
    wall = max(r[0] for r in res)
    fds = len(os.listdir(f"/proc/{PID}/fd"))
    print(json.dumps({"connections": sum(r[1] for r in res), "seconds": round(wall, 2),
                      "per_second": round(sum(r[1] for r in res) / wall), "gateway_fds": fds}))
    for p in ps: p.join()

# Hostile-input check against a running gateway, as a user would see it (needs `pip install websockets`).
# Usage: python3 scripts/check/hostile_ws.py ws://127.0.0.1:9090/ws
import asyncio, json, socket, time, websockets, sys
URL = sys.argv[1]
HOST, PORT = URL.split("//")[1].split("/")[0].split(":")
async def frame(ws, payload):
    await ws.send(payload)
    try:
        return await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed as e:
        return f"closed {e.rcvd.code if e.rcvd else None} {e.rcvd.reason if e.rcvd else ''}"
async def main():
    bystander = await websockets.connect(URL, subprotocols=["firetower.json"])
    await bystander.send(json.dumps({"op":"subscribe","topics":["by.1"],"id":1})); print("bystander", await bystander.recv())
    cases = [("invalid json", "{nope"), ("unknown op", json.dumps({"op":"fly","id":1})),
             ("missing topics", json.dumps({"op":"subscribe","id":2})), ("empty topic", json.dumps({"op":"subscribe","topics":[""],"id":3})),
             ("long topic", json.dumps({"op":"subscribe","topics":["x"*300],"id":4})), ("control char", json.dumps({"op":"subscribe","topics":["a\u0001b"],"id":5})),
             ("publish no data", json.dumps({"op":"publish","topic":"t","id":6}))]
    async with websockets.connect(URL, subprotocols=["firetower.json"]) as ws:
        for name, p in cases:
            print(f"{name:16} ->", await frame(ws, p))
        print(f"{'binary on json':16} ->", await frame(ws, b"\x01\x02"))
    async with websockets.connect(URL, subprotocols=["firetower.json"], max_size=None) as ws:
        print(f"{'1 MiB frame':16} ->", await frame(ws, "x"*(1<<20)))
    async with websockets.connect(URL, subprotocols=["firetower.json"]) as ws:
        t0 = time.time(); codes = {}
        try:
            for i in range(10000):
                await ws.send(json.dumps({"op":"subscribe","topics":[f"flood.{i}"],"id":i}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 5)); k = m.get("code", m["op"]); codes[k] = codes.get(k,0)+1
        except websockets.ConnectionClosed as e:
            print(f"{'10k subscribes':16} -> replies {codes}, then closed {e.rcvd.code if e.rcvd else None} after {time.time()-t0:.2f}s")
        except asyncio.TimeoutError:
            print(f"{'10k subscribes':16} -> replies {codes}, not closed")
    s = socket.create_connection((HOST, int(PORT))); t0 = time.time(); s.settimeout(20)
    try: r = s.recv(100); print(f"{'silent client':16} -> closed after {time.time()-t0:.1f}s ({r[:40]!r})")
    except Exception as e: print("silent client ->", e)
    s = socket.create_connection((HOST, int(PORT))); s.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n"); t0 = time.time(); s.settimeout(20)
    try: r = s.recv(100); print(f"{'half handshake':16} -> closed after {time.time()-t0:.1f}s ({r[:40]!r})")
    except Exception as e: print("half handshake ->", e)
    await bystander.send(json.dumps({"op":"ping","id":9})); print("bystander", await bystander.recv())
asyncio.run(main())

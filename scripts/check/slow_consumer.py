# Slow-consumer check against a running gateway: one client never reads while another
# subscriber and a publisher flood the same topic. Usage (needs `pip install websockets`):
#   python3 scripts/check/slow_consumer.py ws://127.0.0.1:9090/ws GATEWAY_PID
import asyncio, json, socket, base64, os, time, websockets, sys
URL = sys.argv[1]; GWPID = int(sys.argv[2])
HOST, PORT = URL.split("//")[1].split("/")[0].split(":")
def rss(): return int([l for l in open(f"/proc/{GWPID}/status") if l.startswith("VmRSS")][0].split()[1])
def slow_client():
    s = socket.create_connection((HOST, int(PORT)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.send(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: firetower.json\r\n\r\n".encode())
    time.sleep(0.3); s.recv(4096)
    payload = json.dumps({"op":"subscribe","topics":["flood"],"id":1}).encode()
    mask = os.urandom(4); masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.send(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return s   # never read again
async def main():
    slow = slow_client()
    async with websockets.connect(URL, subprotocols=["firetower.json"]) as fast, websockets.connect(URL, subprotocols=["firetower.json"]) as pub:
        await fast.send(json.dumps({"op":"subscribe","topics":["flood"],"id":1})); await fast.recv()
        await asyncio.sleep(1)
        before = rss(); n = 3000; big = "x" * 2000
        async def reader():
            got = 0
            while got < n:
                m = json.loads(await asyncio.wait_for(fast.recv(), 30))
                if m["op"] == "message": got += 1
            return got
        r = asyncio.create_task(reader())
        t0 = time.time()
        for i in range(n):
            await pub.send(json.dumps({"op":"publish","topic":"flood","data":{"i":i,"pad":big},"id":i}))
            while True:
                m = json.loads(await pub.recv())
                if m.get("id") == i: break
        got = await r
        print(f"fast subscriber got {got}/{n} in {time.time()-t0:.1f}s; gateway RSS {before} KiB -> {rss()} KiB")
    slow.settimeout(5)
    try:
        data = b""
        while True:
            chunk = slow.recv(1 << 20)
            if not chunk: break
            data += chunk
    except Exception as e:
        pass
    idx = data.rfind(b"\x88")
    print("slow client: received", len(data), "bytes; close frame code:", int.from_bytes(data[idx+2:idx+4], "big") if idx >= 0 else None)
asyncio.run(main())

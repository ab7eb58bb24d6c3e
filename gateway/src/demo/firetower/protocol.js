/**
 * The JSON flavour of the client protocol (subprotocol `firetower.json`): the frames the
 * client sends, and a parser that turns what the gateway sends into typed frames. No I/O.
 */
import { FiretowerError } from "./errors.js";
/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "firetower.json";
/** Parse one text frame from the gateway; throws `protocol_error` on what it cannot read. */
export function parseServerFrame(text) {
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        throw bad("a frame is not JSON");
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw bad("a frame is not a JSON object");
    }
    const f = value;
    switch (f.op) {
        case "ack":
            return { ...f, op: "ack", id: id(f) };
        case "error":
            return {
                op: "error",
                ...(typeof f.id === "number" ? { id: f.id } : {}),
                code: typeof f.code === "string" ? f.code : "internal_error",
                message: typeof f.message === "string" ? f.message : "",
            };
        case "message":
            return { op: "message", message: message(f) };
        case "pong":
            return { op: "pong", id: id(f) };
        case "history": {
            if (!Array.isArray(f.messages)) {
                throw bad("a history frame without messages");
            }
            return {
                op: "history",
                id: id(f),
                topic: str(f, "topic"),
                epoch: typeof f.epoch === "string" ? f.epoch : "",
                offset: typeof f.offset === "number" ? f.offset : 0,
                messages: f.messages.map((m) => message(m)),
            };
        }
        case "presence": {
            if (!Array.isArray(f.users)) {
                throw bad("a presence frame without users");
            }
            const users = f.users.map((u) => {
                const r = u;
                return { user: str(r, "user"), connections: typeof r.connections === "number" ? r.connections : 1 };
            });
            return { op: "presence", id: id(f), topic: str(f, "topic"), users };
        }
        case "gap":
            return { op: "gap", topic: str(f, "topic"), dropped: typeof f.dropped === "number" ? f.dropped : 0 };
        case "join":
        case "leave":
            return { op: f.op, topic: str(f, "topic"), user: str(f, "user") };
        default:
            throw bad(`an unknown op ${JSON.stringify(f.op)}`);
    }
}
function message(f) {
    if (f === null || typeof f !== "object") {
        throw bad("a message that is not an object");
    }
    const m = {
        topic: str(f, "topic"),
        data: f.data,
        term: typeof f.term === "number" ? f.term : 0,
        seq: typeof f.seq === "number" ? f.seq : 0,
    };
    if (typeof f.offset === "number" && typeof f.epoch === "string") {
        m.offset = f.offset;
        m.epoch = f.epoch;
    }
    if (f.encoding === "base64") {
        m.encoding = "base64";
    }
    return m;
}
function id(f) {
    if (typeof f.id !== "number") {
        throw bad(`a ${String(f.op)} frame without an id`);
    }
    return f.id;
}
function str(f, key) {
    const v = f[key];
    if (typeof v !== "string") {
        throw bad(`a ${String(f.op ?? "message")} frame without ${key}`);
    }
    return v;
}
function bad(what) {
    return new FiretowerError("protocol_error", `the gateway sent ${what}; is this a Firetower gateway?`);
}
/**
 * Decide whether a message is new for a subscription that last processed `last`, and where it
 * stands after it. A message without offset (a topic without history) is always new and does
 * not move the position. One with an offset at or below the last one of the same epoch is a
 * duplicate (a recovery replay overlapping a live delivery): drop it. A new epoch means the
 * history was lost and restarted, so its offsets start over.
 */
export function advance(last, m) {
    if (m.offset === undefined || m.epoch === undefined) {
        return { fresh: true, position: last };
    }
    if (last !== undefined && last.epoch === m.epoch && m.offset <= last.offset) {
        return { fresh: false, position: last };
    }
    return { fresh: true, position: { epoch: m.epoch, offset: m.offset } };
}

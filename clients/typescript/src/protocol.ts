/**
 * The JSON flavour of the client protocol (subprotocol `firetower.json`): the frames the
 * client sends, and a parser that turns what the gateway sends into typed frames. No I/O.
 */

import { FiretowerError } from "./errors.js";

/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "firetower.json";

/** Where a client stands in a topic's history: the last message it processed. */
export interface Position {
  /** The topic's history epoch; changes only when that history was lost. */
  epoch: string;
  /** The offset of the last message processed (1, 2, 3, ... per topic). */
  offset: number;
}

/** A message published to a topic. */
export interface Message<T = unknown> {
  topic: string;
  /** What was published (JSON), or base64 text when `encoding` is `"base64"`. */
  data: T;
  /** Leader term and per-topic sequence number: the order of the topic's messages. */
  term: number;
  seq: number;
  /** Only on topics with history: the message's offset and the history's epoch. */
  offset?: number;
  epoch?: string;
  /** `"base64"` when a protobuf client published bytes that are not JSON. */
  encoding?: "base64";
}

/** A user present on a topic, with how many connections it holds there. */
export interface PresenceUser {
  user: string;
  connections: number;
}

/** Frames the client sends. */
export type ClientFrame =
  | { op: "auth"; id: number; token: string }
  | {
      op: "subscribe";
      id: number;
      topics: string[];
      recover?: Record<string, Position>;
      join_leave?: boolean;
    }
  | { op: "unsubscribe"; id: number; topics: string[] }
  | { op: "publish"; id: number; topic: string; data: unknown }
  | { op: "history"; id: number; topic: string; limit?: number }
  | { op: "presence"; id: number; topic: string }
  | { op: "ping"; id: number };

/** An `ack`: its extra fields depend on the request it answers. */
export interface AckFrame {
  op: "ack";
  id: number;
  /** An `auth` ack: who the connection acts as. */
  user?: string;
  /** A publish ack. */
  term?: number;
  seq?: number;
  offset?: number;
  epoch?: string;
  /** A subscribe ack with `recover`: per topic, whether every missed message follows. */
  recovered?: Record<string, boolean>;
}

/** Frames the gateway sends, as parsed. */
export type ServerFrame =
  | AckFrame
  | { op: "error"; id?: number; code: string; message: string }
  | { op: "message"; message: Message }
  | { op: "pong"; id: number }
  | {
      op: "history";
      id: number;
      topic: string;
      epoch: string;
      offset: number;
      messages: Message[];
    }
  | { op: "presence"; id: number; topic: string; users: PresenceUser[] }
  | { op: "gap"; topic: string; dropped: number }
  | { op: "join" | "leave"; topic: string; user: string };

/** Parse one text frame from the gateway; throws `protocol_error` on what it cannot read. */
export function parseServerFrame(text: string): ServerFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw bad("a frame is not JSON");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw bad("a frame is not a JSON object");
  }
  const f = value as Record<string, unknown>;
  switch (f.op) {
    case "ack":
      return { ...f, op: "ack", id: id(f) } as AckFrame;
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
        messages: f.messages.map((m: unknown) => message(m as Record<string, unknown>)),
      };
    }
    case "presence": {
      if (!Array.isArray(f.users)) {
        throw bad("a presence frame without users");
      }
      const users = f.users.map((u: unknown) => {
        const r = u as Record<string, unknown>;
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

function message(f: Record<string, unknown>): Message {
  if (f === null || typeof f !== "object") {
    throw bad("a message that is not an object");
  }
  const m: Message = {
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

function id(f: Record<string, unknown>): number {
  if (typeof f.id !== "number") {
    throw bad(`a ${String(f.op)} frame without an id`);
  }
  return f.id;
}

function str(f: Record<string, unknown>, key: string): string {
  const v = f[key];
  if (typeof v !== "string") {
    throw bad(`a ${String(f.op ?? "message")} frame without ${key}`);
  }
  return v;
}

function bad(what: string): FiretowerError {
  return new FiretowerError("protocol_error", `the gateway sent ${what}; is this a Firetower gateway?`);
}

/**
 * Decide whether a message is new for a subscription that last processed `last`, and where it
 * stands after it. A message without offset (a topic without history) is always new and does
 * not move the position. One with an offset at or below the last one of the same epoch is a
 * duplicate (a recovery replay overlapping a live delivery): drop it. A new epoch means the
 * history was lost and restarted, so its offsets start over.
 */
export function advance(last: Position | undefined, m: Message): { fresh: boolean; position: Position | undefined } {
  if (m.offset === undefined || m.epoch === undefined) {
    return { fresh: true, position: last };
  }
  if (last !== undefined && last.epoch === m.epoch && m.offset <= last.offset) {
    return { fresh: false, position: last };
  }
  return { fresh: true, position: { epoch: m.epoch, offset: m.offset } };
}

// Write Runnel functions in JavaScript.
//
// A function is a file `app.js` that exports `handle(message)`; the host calls
// it for every Kafka record. Returning lets the host commit the record.
// Throwing tells the host what to do:
//   - BadInput: the record can never be handled; it is dead-lettered.
//   - RetryLater: a passing failure; the host retries the record later.
//   - GiveUp: the function cannot go on until another version is deployed.
// Capability errors are these too, so one left uncaught does the right thing:
// Unavailable is a RetryLater; NotPermitted, Invalid and Conflict are GiveUp.
// Any other exception is a bug in the function: the call traps, and the host
// retries the record a few times, then dead-letters it.
//
// The function reaches the outside only through `documents`, `mail`,
// `config`, `log` and `nowMs`, each checked by the host against the grants in
// the function's runnel.toml.

import * as witDocuments from "runnel:function/documents@0.1.0";
import * as witMail from "runnel:function/mail@0.1.0";
import * as witConfig from "runnel:function/config@0.1.0";
import * as witLogging from "runnel:function/logging@0.1.0";
import * as witClock from "runnel:function/clock@0.1.0";
import * as witBatch from "runnel:function/batch@0.1.0";

/** Why a record was not handled; `payload` is the world's handler-error. */
export class HandlerError extends Error {
  constructor(tag, message) {
    super(message);
    this.name = new.target.name;
    // The component's glue turns a thrown object's own `payload` into the
    // export's error result.
    Object.defineProperty(this, "payload", { value: { tag, val: String(message) }, enumerable: false });
  }
}
export class BadInput extends HandlerError {
  constructor(message) { super("bad-input", message); }
}
export class RetryLater extends HandlerError {
  constructor(message) { super("retry-later", message); }
}
export class GiveUp extends HandlerError {
  constructor(message) { super("give-up", message); }
}
/** A service behind a capability did not answer (worth a retry). */
export class Unavailable extends RetryLater {}
/** The manifest does not grant this collection or capability. */
export class NotPermitted extends GiveUp {}
/** The document, filter, update or message is not valid. */
export class Invalid extends GiveUp {}
/** A document with the same `_id` already exists. */
export class Conflict extends GiveUp {}

const ERRORS = { "not-permitted": NotPermitted, invalid: Invalid, conflict: Conflict, unavailable: Unavailable };

// Calls a capability, turning its error variant into one of the classes above.
function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    const error = e && Object.prototype.hasOwnProperty.call(e, "payload") ? e.payload : e;
    if (error && typeof error.tag === "string") {
      throw new (ERRORS[error.tag] ?? GiveUp)(String(error.val));
    }
    throw e;
  }
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** One Kafka record. */
export class Message {
  constructor(record) {
    this.topic = record.topic;
    this.partition = record.partition;
    // Offsets and times are numbers (exact below 2^53, which Kafka's are in
    // practice); `offsetBigInt` is the exact value.
    this.offset = Number(record.offset);
    this.offsetBigInt = record.offset;
    this.key = record.key ?? null;
    this.payload = record.payload;
    this.headers = record.headers;
    this.timestampMs = record.timestampMs == null ? null : Number(record.timestampMs);
  }

  /** The payload as UTF-8 text; BadInput when it is not. */
  text() {
    try {
      return decoder.decode(this.payload);
    } catch (e) {
      throw new BadInput(`the payload is not UTF-8: ${e.message}`);
    }
  }

  /** The payload parsed as JSON; BadInput when it is not. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new BadInput(`the payload is not JSON: ${e.message}`);
    }
  }

  /** The value (bytes) of the first header named `key`, or null. */
  header(key) {
    const header = this.headers.find((h) => h.key === key);
    return header ? header.value : null;
  }
}

/** Documents in the collections the manifest grants; plain objects, sent as
 * MongoDB Extended JSON (`documents.date(ms)` makes a date). Journaled: a
 * record handled again gets the same answers and writes nothing twice. */
export const documents = {
  insertOne(collection, document) {
    return call(witDocuments.insertOne, collection, JSON.stringify(document));
  },
  find(collection, filter = {}, limit = 100) {
    return call(witDocuments.find, collection, JSON.stringify(filter), limit).map((text) => JSON.parse(text));
  },
  updateMany(collection, filter, update, arrayFilters = []) {
    const result = call(
      witDocuments.updateMany, collection, JSON.stringify(filter), JSON.stringify(update),
      arrayFilters.map((f) => JSON.stringify(f)),
    );
    return { matched: Number(result.matched), modified: Number(result.modified) };
  },
  /** Several updates of `collection` in one request, in order: each
   * `{ filter, update, arrayFilters }` (`arrayFilters` optional), as for
   * `updateMany`. The result sums theirs; when one fails, the error names it,
   * the ones before it are applied and the ones after it are not. */
  updateEach(collection, updates) {
    const statements = updates.map((u) => ({
      filter: JSON.stringify(u.filter), update: JSON.stringify(u.update),
      arrayFilters: (u.arrayFilters || []).map((f) => JSON.stringify(f)),
    }));
    const result = call(witDocuments.updateEach, collection, statements);
    return { matched: Number(result.matched), modified: Number(result.modified) };
  },
  date(ms) {
    return { $date: { $numberLong: String(ms) } };
  },
};

/** E-mail through the host's relay, when the manifest grants it. */
export const mail = {
  send(to, subject, body) {
    call(witMail.send, { to: Array.isArray(to) ? to : [to], subject, body });
  },
};

/** The manifest's configuration value `name`, or null. */
export function config(name) {
  return witConfig.get(name) ?? null;
}

const LEVELS = ["trace", "debug", "info", "warn", "error"];

/** A log line, written by the host with the function's name; `level` is one
 * of trace, debug, info, warn, error (anything else: info). */
export function log(message, level = "info") {
  witLogging.log(LEVELS.includes(level) ? level : "info", String(message));
}

/** The host's clock, ms since the Unix epoch (journaled). */
export function nowMs() {
  return Number(witClock.nowMs());
}

/** The world's `handle` export around the function's `handle(message)`. */
export function exportHandler(handler) {
  if (typeof handler !== "function") {
    throw new Error("app.js must export a function `handle(message)`");
  }
  return (record) => {
    try {
      const result = handler(new Message(record));
      if (result && typeof result.then === "function") {
        throw new Error("handle returned a Promise: a Runnel function is synchronous (its capabilities are)");
      }
    } catch (e) {
      if (!(e instanceof HandlerError)) {
        // A bug in the function: its stack goes to the log (stderr), and the
        // call traps.
        console.error(e && e.stack ? e.stack : String(e));
      }
      throw e;
    }
  };
}

// The world's `handle-batch` around `handle` (what `exportHandler` made):
// each record in its turn, its capability calls journaled as its own
// (`batch.begin`); the first the function declines ends the batch, named
// with its error. A bug traps, as in `handle`.
export function exportBatchHandler(handle) {
  return (records) => {
    records.forEach((record, index) => {
      witBatch.begin(index);
      try {
        handle(record);
      } catch (e) {
        if (e instanceof HandlerError) {
          const declined = new Error(e.message);
          Object.defineProperty(declined, "payload", { value: [index, e.payload], enumerable: false });
          throw declined;
        }
        throw e;
      }
    });
  };
}

// A test fixture: the JavaScript twin of tests/fixtures/probe. Does what the
// record's payload says; what the sandbox let it do comes back as the text of
// a give-up. The JavaScript runtime has no file, environment or socket API of
// its own: the probe reports what it finds, and tries `fetch`.
import { BadInput, GiveUp, RetryLater, documents } from "runnel";

function attempt(fn) {
  try {
    return `Ok(${String(fn())})`;
  } catch (e) {
    return `Err(${e && e.name}: ${e && e.message})`;
  }
}

export function handle(message) {
  const text = message.text();
  const at = text.indexOf(":");
  const verb = at < 0 ? text : text.slice(0, at);
  const arg = at < 0 ? "" : text.slice(at + 1);
  switch (verb) {
    case "ok":
      return;
    case "bad-input":
      throw new BadInput("asked for bad-input");
    case "insert":
      // One document naming the record, into the collection `arg`.
      documents.insertOne(arg, { offset: message.offset });
      return;
    case "retry":
      throw new RetryLater("asked to retry");
    case "read-file":
      throw new GiveUp(attempt(() => {
        if (typeof globalThis.require === "function") return globalThis.require("fs").readFileSync(arg, "utf8");
        throw new Error(`no file API (require: ${typeof globalThis.require}, Deno: ${typeof globalThis.Deno})`);
      }));
    case "env":
      throw new GiveUp(attempt(() => {
        const env = globalThis.process && globalThis.process.env;
        if (!env) throw new Error(`no environment (process: ${typeof globalThis.process})`);
        return `${env[arg]} of ${Object.keys(env).length} variables`;
      }));
    case "connect":
      throw new GiveUp(attempt(() => {
        if (typeof fetch !== "function") throw new Error(`no fetch (${typeof fetch})`);
        let result = "pending";
        // The build leaves out HTTP: fetch traps.
        fetch(`http://${arg}/`).then(() => { result = "connected"; }, (e) => { result = `refused: ${e}`; });
        return result;
      }));
    case "update-each":
      // Two updates of nothing in particular, in one call.
      throw new GiveUp(attempt(() => JSON.stringify(documents.updateEach(arg, [
        { filter: { probe: true }, update: { $set: { seen: 1 } } },
        { filter: { probe: true }, update: { $inc: { count: 1 } }, arrayFilters: [] },
      ]))));
    case "print": {
      const line = "x".repeat(1023);
      for (let i = 0; i < Number(arg) * 1024; i++) console.log(line);
      return;
    }
    case "trap":
      throw new Error("asked to trap");
    default:
      throw new BadInput(`unknown command ${JSON.stringify(verb)}`);
  }
}

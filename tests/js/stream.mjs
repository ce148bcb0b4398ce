// Streams a run from threadkeeper with the JS langgraph-sdk, as a JS app (useStream) would:
// token by token (messages-tuple), tool progress (tools) and state (values) from replica A,
// then the rest of the run from replica B after the third event (Last-Event-ID), and a thread
// stream on B. Prints one JSON object for tests/system/test_js_sdk.py to check.
import { Client } from "@langchain/langgraph-sdk";

const [urlA, urlB] = process.argv.slice(2);
const onA = new Client({ apiUrl: urlA });
const onB = new Client({ apiUrl: urlB });
const streamMode = ["messages-tuple", "tools", "values"];
const input = { messages: [{ role: "user", content: "please look up slowly 0.3" }] };

const thread = await onA.threads.create();
let runId;
const whole = [];
for await (const part of onA.runs.stream(thread.thread_id, "agent", {
  input,
  streamMode,
  onRunCreated: (run) => {
    runId = run.run_id;
  },
})) {
  whole.push({ event: part.event, data: part.data, id: part.id });
}

const rest = [];
for await (const part of onB.runs.joinStream(thread.thread_id, runId, {
  lastEventId: "3",
  streamMode,
})) {
  rest.push({ event: part.event, data: part.data });
}

// Tool progress, reduced as useStream reduces it for `toolProgress`.
const toolProgress = new Map();
const states = { on_tool_start: "starting", on_tool_event: "running", on_tool_end: "completed" };
for (const part of whole.filter((p) => p.event === "tools")) {
  const key = part.data.toolCallId ?? part.data.name;
  toolProgress.set(key, { ...toolProgress.get(key), name: part.data.name, state: states[part.data.event] });
}

let refused;
try {
  for await (const part of onA.runs.stream(thread.thread_id, "agent", { input, streamMode: "bogus" })) {
    refused = { event: part.event, data: part.data };
  }
} catch (error) {
  refused = { status: error.status, message: String(error.message ?? error) };
}

console.log(JSON.stringify({ runId, whole, rest, toolProgress: [...toolProgress.values()], refused }));

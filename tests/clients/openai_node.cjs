// The OpenAI Node SDK (npm "openai") against a jllm server: tests/test_server_clients.py runs this with
// `node openai_node.cjs BASE_URL MODEL` and checks the JSON it prints. Each entry is what the SDK handed its caller.
const OpenAI = require("openai");

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "hi" }];
const tool = {
  type: "function",
  function: {
    name: "pick",
    parameters: { type: "object", properties: { x: { enum: [1] } }, required: ["x"], additionalProperties: false },
  },
};

async function errorOf(promise) {
  try {
    const stream = await promise;
    for await (const _ of stream) {
    }
    return null;
  } catch (e) {
    return { isAPIError: e instanceof OpenAI.APIError, status: e.status, param: e.param, code: e.code };
  }
}

async function main() {
  const out = {};
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, seed: 7, logprobs: true, top_logprobs: 2 });
  out.chat = {
    content: chat.choices[0].message.content,
    bytes: chat.choices[0].logprobs.content.flatMap((e) => e.bytes),
    usage: chat.usage,
  };
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 5, n: 2, stream: true, stream_options: { include_usage: true },
  });
  out.chatStream = { texts: ["", ""], usage: null };
  for await (const chunk of stream) {
    for (const c of chunk.choices) out.chatStream.texts[c.index] += c.delta.content ?? "";
    if (chunk.usage) out.chatStream.usage = chunk.usage;
  }
  const completion = await client.completions.create({ model, prompt: "hello", max_tokens: 4, logprobs: 1, stop: ["never"] });
  out.completion = { text: completion.choices[0].text, tokens: completion.choices[0].logprobs.tokens.length };
  out.tools = {};
  for (const [name, tool_choice] of [["named", { type: "function", function: { name: "pick" } }], ["required", "required"]]) {
    const body = { model, messages, tools: [tool], tool_choice, parallel_tool_calls: false, max_tokens: 40 };
    const whole = await client.chat.completions.create(body);
    const helper = client.chat.completions.stream(body);
    const streamed = await helper.finalChatCompletion();  // the SDK assembles the streamed tool-call deltas
    out.tools[name] = [whole, streamed].map((r) => ({
      finish: r.choices[0].finish_reason,
      calls: r.choices[0].message.tool_calls.map((c) => [c.function.name, c.function.arguments]),
    }));
  }
  const schema = { name: "s", strict: true, schema: { enum: ["a"] } };
  const parsed = await client.chat.completions.parse({
    model, messages, max_tokens: 8, response_format: { type: "json_schema", json_schema: schema },
  });
  out.parsed = parsed.choices[0].message.parsed;
  const controller = new AbortController();
  const long = await client.chat.completions.create(
    { model, messages, max_tokens: 100, stream: true, ignore_eos: true }, { signal: controller.signal });
  out.abortedAfter = 0;
  for await (const _ of long) {
    if (++out.abortedAfter === 3) controller.abort();  // the SDK ends the iteration quietly
  }
  out.errors = {
    model: await errorOf(client.chat.completions.create({ model: "absent", messages })),
    streamed: await errorOf(client.chat.completions.create({ model, messages, stream: true, temperature: -1 })),
    type: await errorOf(client.completions.create({ model, prompt: "hi", max_tokens: "many" })),
  };
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// tests/serve_client.mjs - t_serve's client: the official OpenAI node package
// (openai@5.23.2, fetched by tests/fetch-ggml.sh, found through MS_OPENAI,
// its package folder) talking to `moestream serve`, so that the server is
// checked against what real clients send and how they read the replies.
//
//   node tests/serve_client.mjs BASE_URL API_KEY MODE [PROMPT [MAX_TOKENS]]
//
// BASE_URL is http://127.0.0.1:PORT/v1. MODE is one of
//   chat         non-streaming chat, one user message, temperature 0
//   chat-stream  the same streamed, with stream_options.include_usage
//   completion   non-streaming /v1/completions, temperature 0
//   models       the model list
// Prints one JSON line on stdout: {"ok":true, ...} with the text
// ("content"), "finish_reason", "usage" (and "chunks" when streamed, "ids"
// for models); exits 0. A client error prints {"ok":false,"status",
// "message","type","code"} and exits 1; bad usage exits 2. No retries
// (maxRetries 0): the first answer is the one checked.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

function out(obj, code) {
	process.stdout.write(JSON.stringify(obj) + '\n');
	process.exitCode = code;
}

// The package's ESM entry, from its package.json "exports" map.
function esmEntry(dir) {
	const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
	let e = pkg.exports && pkg.exports['.'];
	if (e && typeof e === 'object')
		e = e.import?.default ?? e.import ?? e.default;
	if (typeof e !== 'string')
		e = pkg.module ?? pkg.main ?? 'index.js';
	return path.join(dir, e);
}

async function main() {
	const [base, key, mode, prompt = 'Hello', maxArg = '8'] = process.argv.slice(2);
	if (!base || key === undefined || !mode) {
		process.stderr.write('usage: node serve_client.mjs BASE_URL API_KEY MODE ' +
			'[PROMPT [MAX_TOKENS]]\n');
		process.exitCode = 2;
		return;
	}
	const dir = process.env.MS_OPENAI;
	if (!dir) {
		out({ ok: false, status: null, message: 'MS_OPENAI is not set' }, 2);
		return;
	}
	const mod = await import(pathToFileURL(esmEntry(dir)).href);
	const OpenAI = mod.default ?? mod.OpenAI;
	const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0,
				    timeout: 60000 });
	const max_tokens = Number(maxArg);
	const model = 'moestream-test';
	try {
		if (mode === 'chat') {
			const r = await client.chat.completions.create({
				model, messages: [{ role: 'user', content: prompt }],
				temperature: 0, max_tokens,
			});
			const c = r.choices[0];
			out({ ok: true, object: r.object, id: r.id, model: r.model,
			      role: c.message.role, content: c.message.content,
			      finish_reason: c.finish_reason, usage: r.usage }, 0);
		} else if (mode === 'chat-stream') {
			const s = await client.chat.completions.create({
				model, messages: [{ role: 'user', content: prompt }],
				temperature: 0, max_tokens, stream: true,
				stream_options: { include_usage: true },
			});
			let content = '', chunks = 0, finish = null, usage = null,
				role = null, objects = new Set(), ids = new Set();
			for await (const ch of s) {
				chunks++;
				objects.add(ch.object);
				ids.add(ch.id);
				if (ch.usage)
					usage = ch.usage;
				const c = ch.choices && ch.choices[0];
				if (!c)
					continue;
				if (c.delta?.role)
					role = c.delta.role;
				if (c.delta?.content)
					content += c.delta.content;
				if (c.finish_reason)
					finish = c.finish_reason;
			}
			out({ ok: true, content, chunks, role, finish_reason: finish, usage,
			      objects: [...objects], ids: ids.size }, 0);
		} else if (mode === 'completion') {
			const r = await client.completions.create({
				model, prompt, temperature: 0, max_tokens,
			});
			const c = r.choices[0];
			out({ ok: true, object: r.object, id: r.id, model: r.model,
			      content: c.text, finish_reason: c.finish_reason,
			      usage: r.usage }, 0);
		} else if (mode === 'models') {
			const ids = [];
			for await (const m of client.models.list())
				ids.push(m.id);
			out({ ok: true, ids }, 0);
		} else {
			process.stderr.write(`serve_client: unknown mode '${mode}'\n`);
			process.exitCode = 2;
		}
	} catch (e) {
		// APIError: status, the body's error object in e.error
		const body = e && typeof e.error === 'object' && e.error ? e.error : {};
		out({ ok: false, status: e?.status ?? null,
		      message: body.message ?? String(e?.message ?? e),
		      type: body.type ?? null, code: body.code ?? null,
		      name: e?.constructor?.name ?? null }, 1);
	}
}

main().catch((e) => out({ ok: false, status: null,
			  message: String(e?.stack ?? e) }, 1));

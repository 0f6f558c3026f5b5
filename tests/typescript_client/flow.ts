// A mobile app's whole flow in TypeScript (the React Native path of docs/mobile.md, "Generated clients"):
// types generated from docs/openapi.json by openapi-typescript (into api.ts next to this file), calls
// through openapi-fetch. tests/test_generated_clients.py type-checks it with `tsc --strict` and runs it
// against the app and its Terra sandbox; a field renamed in the API document fails the type check.
//
// By hand, in this folder: npm ci; npx openapi-typescript ../../docs/openapi.json -o api.ts;
// npx tsc -p .; TERRA_CONNECT_URL=http://127.0.0.1:5000 TERRA_CONNECT_EMAIL=… TERRA_CONNECT_PASSWORD=…
// node build/flow.js (the account must exist: register it on the web first).
import createClient, { type Client } from "openapi-fetch";

import type { components, paths } from "./api.js";

type Attempt = components["schemas"]["Attempt"];
type ApiError = components["schemas"]["ApiError"];

function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

/** An answer the flow did not expect: its status and, when the body was the API's error, its code. */
function failure(step: string, response: Response, error: ApiError | string | undefined): Error {
  const code = typeof error === "object" ? error.error.code : "no error body";
  return new Error(`${step}: HTTP ${response.status} (${code})`);
}

// docs/mobile.md: poll
/** One long poll: the new state and its ETag, or `null` when the attempt is still the version `etag` names. */
async function poll(api: Client<paths>, attemptId: string, etag: string | null, wait: number) {
  const { data, response } = await api.GET("/connect-attempts/{attempt_id}", {
    params: {
      path: { attempt_id: attemptId },
      query: { wait },
      header: etag === null ? {} : { "If-None-Match": etag },
    },
  });
  // The status first: openapi-fetch counts a 304 as an error, and as a 304 has no body, `error` is ""
  // where its type says `ApiError | undefined`.
  if (response.status === 304) return null;
  if (data === undefined) throw new Error(`poll: HTTP ${response.status}`);
  return { state: data, etag: response.headers.get("ETag") };
}
// docs/mobile.md: end

/** Finish the sandbox's widget as a user who connects, then open the return page the widget sends them to. */
async function finishWidget(widgetUrl: string): Promise<void> {
  const completed = await fetch(`${widgetUrl}/complete`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ provider: "GARMIN", account: "ada", outcome: "success" }),
  });
  if (!completed.ok) throw new Error(`the sandbox's widget: HTTP ${completed.status}`);
  const { redirect_url } = (await completed.json()) as { redirect_url: string };
  const returned = await fetch(redirect_url);
  if (!returned.ok) throw new Error(`the return page: HTTP ${returned.status}`);
}

async function main(): Promise<void> {
  const baseUrl = `${setting("TERRA_CONNECT_URL")}/api/v1`;
  const signIn = await createClient<paths>({ baseUrl }).POST("/tokens", {
    body: { email: setting("TERRA_CONNECT_EMAIL"), password: setting("TERRA_CONNECT_PASSWORD") },
  });
  if (signIn.data === undefined) throw failure("sign in", signIn.response, signIn.error);
  const api = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${signIn.data.access_token}` } });
  console.log("signed in");

  const started = await api.POST("/connect-attempts", { body: { providers: ["GARMIN"], language: "en" } });
  if (started.data === undefined) throw failure("start", started.response, started.error);
  const attemptId = started.data.attempt_id;

  const first = await poll(api, attemptId, null, 0);
  if (first === null) throw new Error("a poll without If-None-Match was answered 304");
  let state: Attempt = first.state;
  let etag = first.etag;
  console.log(`attempt ${state.status}, version ${state.version}`);
  // Nothing changes within a second: with the ETag just seen, the long poll ends in 304.
  if ((await poll(api, attemptId, etag, 1)) === null) console.log("not modified");

  await finishWidget(started.data.url);
  for (let polls = 0; !state.terminal && polls < 20; polls++) {
    const news = await poll(api, attemptId, etag, 5);
    if (news !== null) ({ state, etag } = news);
  }
  if (state.status !== "connected" || state.connection?.status !== "active") {
    throw new Error(`the attempt ended ${state.status}: ${state.error?.message ?? "no error"}`);
  }
  console.log(`connected ${state.connection.provider}, hint ${state.hint}`);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});

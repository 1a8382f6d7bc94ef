/**
 * The live dashboard the server serves at `/` on its HTTP listener. Bundled by
 * esbuild (`npm run build:dashboard`) into server/jobcontrol/server/dashboard/app.js,
 * which the Python package ships, so it needs no Node where it runs.
 *
 * Job data never comes by polling: the job list is one ListJobs load followed by a
 * WatchJobs stream (resumed from the last sequence seen if it drops), and a job's page
 * follows WatchJob from after_sequence=0 (its whole history, then live). Only the
 * workers view re-reads ListWorkers, every WORKERS_REFRESH_MS while it is open: the
 * API has no stream of worker heartbeats.
 */

import {
  Code,
  ConnectError,
  EventKind,
  JobState,
  WorkerState,
  createJobControlClient,
  eventKindName,
  isTerminalState,
  jobStateName,
  timestampDate,
  type Job,
  type JobControlClient,
  type JobEvent,
  type JsonObject,
  type Worker,
} from "../src/web.js";

const TOKEN_KEY = "jobcontrol.token";
const WORKERS_REFRESH_MS = 5000;
const RECONNECT_MS = 1000;
const SHOWN_JOBS = 200;
const LOADED_JOBS = 500;
const LOADED_PENDING_PAGES = 10;

type Child = Node | string | null | undefined | false;

/** A DOM element: attributes (`on*` are listeners), then children; text is never HTML. */
function h(
  tag: string,
  attrs: Record<string, string | boolean | number | EventListener | undefined> = {},
  ...children: Child[]
): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) element.append(child);
  }
  return element;
}

function present(...children: Child[]): (Node | string)[] {
  return children.filter(
    (child): child is Node | string => typeof child === "string" || child instanceof Node,
  );
}

function byId<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`#${id} is missing from index.html`);
  return element as T;
}

// ---- state ---------------------------------------------------------------------------

let client: JobControlClient = makeClient();
const jobs = new Map<string, Job>();
let lastSequence: bigint | undefined;
let jobsStream: AbortController | undefined;
let viewStream: AbortController | undefined;
let viewTimer: number | undefined;
let viewStreams = false; // whether the view reads anything besides the job list
let render: () => void = () => {};
let renderQueued = false;

function makeClient(): JobControlClient {
  return createJobControlClient("", { token: sessionStorage.getItem(TOKEN_KEY) ?? undefined });
}

function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    render();
  });
}

function jobTime(job: Job, which: "createTime" | "updateTime"): number {
  const time = job[which];
  return time === undefined ? 0 : timestampDate(time).getTime();
}

/** Keeps the newer of what we hold and `job` (a listing may race a stream's event). */
function remember(job: Job): void {
  const held = jobs.get(job.id);
  if (held === undefined || jobTime(job, "updateTime") >= jobTime(held, "updateTime")) {
    jobs.set(job.id, job);
  }
}

function setConnection(text: string, live: boolean): void {
  const status = byId("connection");
  status.textContent = text;
  status.dataset.live = String(live);
}

// ---- auth ----------------------------------------------------------------------------

function isUnauthenticated(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unauthenticated;
}

function askForToken(): void {
  const form = byId<HTMLFormElement>("auth");
  if (!form.hidden) return;
  form.hidden = false;
  setConnection("sign in needed", false);
  byId<HTMLInputElement>("token").focus();
}

function signIn(event: Event): void {
  event.preventDefault();
  const token = byId<HTMLInputElement>("token").value.trim();
  if (token === "") return;
  sessionStorage.setItem(TOKEN_KEY, token);
  byId<HTMLFormElement>("auth").hidden = true;
  client.close();
  client = makeClient();
  startJobsStream();
  route();
}

// ---- the job list: ListJobs once, then WatchJobs -------------------------------------

function startJobsStream(): void {
  jobsStream?.abort();
  const controller = new AbortController();
  jobsStream = controller;
  void followJobs(controller.signal);
}

async function followJobs(signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    try {
      const stream = client.raw.watchJobs({ afterSequence: lastSequence }, { signal });
      if (lastSequence === undefined) {
        // Watch first, then list: a change made while listing arrives on the stream.
        const first = stream[Symbol.asyncIterator]();
        const pending = first.next();
        pending.catch(() => {}); // if the listing fails first, the stream's error is the same
        await loadJobs(signal);
        setConnection("live", true);
        let next = await pending;
        while (!next.done) {
          onJobEvent(next.value.event);
          next = await first.next();
        }
      } else {
        setConnection("live", true);
        for await (const response of stream) onJobEvent(response.event);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (isUnauthenticated(error)) {
        askForToken();
        return;
      }
      setConnection(`reconnecting: ${ConnectError.from(error).rawMessage}`, false);
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

async function loadJobs(signal: AbortSignal): Promise<void> {
  const recent = await client.raw.listJobs({ pageSize: LOADED_JOBS }, { signal });
  recent.jobs.forEach(remember);
  // Every queued job, so the queue depth is whole.
  let pageToken = "";
  for (let page = 0; page < LOADED_PENDING_PAGES; page++) {
    const pending = await client.raw.listJobs(
      { filter: { states: [JobState.PENDING] }, pageSize: 1000, pageToken },
      { signal },
    );
    pending.jobs.forEach(remember);
    pageToken = pending.nextPageToken;
    if (pageToken === "") break;
  }
  scheduleRender();
}

function onJobEvent(event: JobEvent | undefined): void {
  if (event?.job === undefined) return;
  if (lastSequence === undefined || event.sequence > lastSequence) lastSequence = event.sequence;
  remember(event.job);
  scheduleRender();
}

// ---- pieces --------------------------------------------------------------------------

function stateName(state: JobState): string {
  return jobStateName(state);
}

function stateBadge(job: Job): HTMLElement {
  const name = stateName(job.state);
  const text = job.cancelRequested && !isTerminalState(job.state) ? `${name} (cancelling)` : name;
  return h("span", { class: `state state-${name.toLowerCase()}` }, text);
}

function progressBar(job: Job, label: string): HTMLElement {
  const percent = Math.round(job.progress?.percent ?? 0);
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: 100, value: percent, "aria-label": label }),
    h("span", { class: "percent" }, `${percent}%`),
  );
}

function when(time: Parameters<typeof timestampDate>[0] | undefined): string {
  return time === undefined ? "" : timestampDate(time).toLocaleString();
}

function json(value: JsonObject | undefined): string {
  return JSON.stringify(value ?? {}, null, 2);
}

function actions(job: Job, after?: () => void): HTMLElement {
  const cell = h("span", { class: "actions" });
  if (!isTerminalState(job.state)) {
    cell.append(
      h(
        "button",
        {
          type: "button",
          disabled: job.cancelRequested,
          "aria-label": `Cancel job ${job.id}`,
          onclick: () => act(() => client.cancel(job.id, "cancelled from the dashboard"), after),
        },
        "Cancel",
      ),
    );
  }
  if (job.state === JobState.FAILED || job.state === JobState.CANCELLED) {
    cell.append(
      h(
        "button",
        {
          type: "button",
          "aria-label": `Retry job ${job.id}`,
          onclick: () => act(() => client.retry(job.id), after),
        },
        "Retry",
      ),
    );
  }
  return cell;
}

async function act(call: () => Promise<Job>, after?: () => void): Promise<void> {
  try {
    remember(await call());
    scheduleRender();
    after?.();
  } catch (error) {
    if (isUnauthenticated(error)) askForToken();
    else alertError(error);
  }
}

function alertError(error: unknown): void {
  const message = byId("message");
  message.textContent = ConnectError.from(error).rawMessage;
  message.hidden = false;
}

// ---- views ---------------------------------------------------------------------------

const filters = { state: "", type: "", label: "" };

function jobsView(main: HTMLElement): void {
  const typeInput = h("input", {
    id: "submit-type",
    name: "type",
    required: true,
    value: "demo.sleep",
    autocomplete: "off",
  }) as HTMLInputElement;
  const payloadInput = h(
    "textarea",
    { id: "submit-payload", name: "payload", rows: 3, spellcheck: "false" },
    '{"seconds": 5, "steps": 10}',
  ) as HTMLTextAreaElement;
  const submitOutput = h("output", { id: "submit-result", for: "submit-type submit-payload" });
  const submitForm = h(
    "form",
    {
      class: "submit",
      "aria-labelledby": "submit-heading",
      onsubmit: (event: Event) => {
        event.preventDefault();
        void submitJob(typeInput.value.trim(), payloadInput.value, submitOutput);
      },
    },
    h("h2", { id: "submit-heading" }, "Submit a job"),
    h("label", { for: "submit-type" }, "Type"),
    typeInput,
    h("label", { for: "submit-payload" }, "Payload (JSON)"),
    payloadInput,
    h("button", { type: "submit" }, "Submit"),
    submitOutput,
  );

  const stateSelect = h(
    "select",
    {
      id: "filter-state",
      onchange: (event: Event) => {
        filters.state = (event.target as HTMLSelectElement).value;
        scheduleRender();
      },
    },
    h("option", { value: "" }, "any"),
    ...[
      JobState.PENDING,
      JobState.RUNNING,
      JobState.SUCCEEDED,
      JobState.FAILED,
      JobState.CANCELLED,
    ].map((state) =>
      h(
        "option",
        { value: stateName(state), selected: filters.state === stateName(state) },
        stateName(state),
      ),
    ),
  );
  const textFilter = (id: string, key: "type" | "label", placeholder: string) =>
    h("input", {
      id,
      type: "search",
      value: filters[key],
      placeholder,
      oninput: (event: Event) => {
        filters[key] = (event.target as HTMLInputElement).value.trim();
        scheduleRender();
      },
    });
  const filterBar = h(
    "div",
    { class: "filters", role: "search", "aria-label": "Filter jobs" },
    h("label", { for: "filter-state" }, "State"),
    stateSelect,
    h("label", { for: "filter-type" }, "Type"),
    textFilter("filter-type", "type", "e.g. demo.sleep"),
    h("label", { for: "filter-label" }, "Label"),
    textFilter("filter-label", "label", "key=value"),
  );

  const queueBody = h("tbody");
  const queue = h(
    "section",
    { "aria-labelledby": "queue-heading" },
    h("h2", { id: "queue-heading" }, "Queue"),
    h(
      "table",
      { id: "queue" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Type"),
          h("th", { scope: "col" }, "Pending"),
          h("th", { scope: "col" }, "Running"),
        ),
      ),
      queueBody,
    ),
  );

  const jobsBody = h("tbody");
  const count = h("p", { class: "count", "aria-live": "polite" });
  const list = h(
    "section",
    { "aria-labelledby": "jobs-heading" },
    h("h2", { id: "jobs-heading" }, "Jobs"),
    filterBar,
    count,
    h(
      "table",
      { id: "jobs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["Job", "Type", "State", "Progress", "Stage", "Attempts", "Updated", "Actions"].map(
            (name) => h("th", { scope: "col" }, name),
          ),
        ),
      ),
      jobsBody,
    ),
  );

  main.replaceChildren(h("div", { class: "columns" }, submitForm, queue), list);

  const rows = new Map<string, HTMLElement>();
  render = () => {
    const depth = new Map<string, [number, number]>();
    for (const job of jobs.values()) {
      const counts = depth.get(job.type) ?? [0, 0];
      if (job.state === JobState.PENDING) counts[0] += 1;
      else if (job.state === JobState.RUNNING) counts[1] += 1;
      else continue;
      depth.set(job.type, counts);
    }
    queueBody.replaceChildren(
      ...[...depth.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([type, [pending, running]]) =>
          h(
            "tr",
            { "data-type": type },
            h("th", { scope: "row" }, type),
            h("td", {}, String(pending)),
            h("td", {}, String(running)),
          ),
        ),
    );
    if (depth.size === 0) {
      queueBody.replaceChildren(h("tr", {}, h("td", { colspan: 3 }, "Nothing queued or running.")));
    }

    const shown = [...jobs.values()]
      .filter(matches)
      .sort(
        (a, b) => jobTime(b, "createTime") - jobTime(a, "createTime") || b.id.localeCompare(a.id),
      );
    count.textContent = `${shown.length} job${shown.length === 1 ? "" : "s"}${shown.length > SHOWN_JOBS ? `, newest ${SHOWN_JOBS} shown` : ""}`;
    const ordered = shown.slice(0, SHOWN_JOBS).map((job) => {
      const row = rows.get(job.id) ?? h("tr", { "data-job-id": job.id });
      rows.set(job.id, row);
      row.dataset.state = stateName(job.state);
      row.replaceChildren(
        h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "id" }, job.id)),
        h("td", {}, job.type, labelsOf(job)),
        h("td", {}, stateBadge(job)),
        h("td", {}, progressBar(job, `Progress of job ${job.id}`)),
        h("td", {}, job.progress?.stage ?? ""),
        h("td", {}, `${job.attempt}/${job.maxAttempts}`),
        h("td", {}, when(job.updateTime)),
        h("td", {}, actions(job)),
      );
      return row;
    });
    jobsBody.replaceChildren(...ordered);
  };
  render();
}

function labelsOf(job: Job): HTMLElement | null {
  const labels = Object.entries(job.labels);
  if (labels.length === 0) return null;
  return h("small", { class: "labels" }, labels.map(([key, value]) => `${key}=${value}`).join(" "));
}

function matches(job: Job): boolean {
  if (filters.state !== "" && stateName(job.state) !== filters.state) return false;
  if (filters.type !== "" && !job.type.includes(filters.type)) return false;
  if (filters.label !== "") {
    const [key = "", value] = filters.label.split("=", 2);
    const found = job.labels[key.trim()];
    if (found === undefined || (value !== undefined && found !== value.trim())) return false;
  }
  return true;
}

async function submitJob(type: string, payloadText: string, output: HTMLElement): Promise<void> {
  let payload: JsonObject;
  try {
    const parsed: unknown = JSON.parse(payloadText.trim() === "" ? "{}" : payloadText);
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("the payload must be a JSON object");
    }
    payload = parsed as JsonObject;
  } catch (error) {
    output.textContent = `Not submitted: ${(error as Error).message}`;
    output.className = "error";
    return;
  }
  try {
    const job = await client.submit(type, payload);
    remember(job);
    scheduleRender();
    output.className = "";
    output.replaceChildren("Submitted ", h("a", { href: `#/jobs/${job.id}` }, job.id));
  } catch (error) {
    if (isUnauthenticated(error)) askForToken();
    output.textContent = `Not submitted: ${ConnectError.from(error).rawMessage}`;
    output.className = "error";
  }
}

function jobView(main: HTMLElement, jobId: string, signal: AbortSignal): void {
  const events: JobEvent[] = [];
  let job: Job | undefined = jobs.get(jobId);
  const status = h("p", { class: "count", role: "status" }, "Loading…");
  const body = h("div");
  const history = h("tbody");
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("h2", {}, "Job ", h("code", {}, jobId)),
    status,
    body,
    h(
      "section",
      { "aria-labelledby": "history-heading" },
      h("h3", { id: "history-heading" }, "History"),
      h(
        "table",
        { id: "history" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ...["Sequence", "Time", "Event", "State", "Progress", "Message"].map((name) =>
              h("th", { scope: "col" }, name),
            ),
          ),
        ),
        history,
      ),
    ),
  );

  const follow = async (): Promise<void> => {
    const after = events.length === 0 ? 0n : events[events.length - 1]!.sequence;
    try {
      for await (const event of client.watch(jobId, { afterSequence: after, signal })) {
        if (event.kind !== EventKind.SNAPSHOT) events.push(event);
        if (event.job !== undefined) {
          job = event.job;
          remember(job);
        }
        status.textContent = "Live";
        show();
      }
      status.textContent = "Finished: its stream has ended.";
    } catch (error) {
      if (signal.aborted) return;
      if (isUnauthenticated(error)) askForToken();
      status.textContent = `Not available: ${ConnectError.from(error).rawMessage}`;
    }
  };

  const show = (): void => {
    if (job === undefined) return;
    const current = job;
    const error = current.error;
    body.replaceChildren(
      ...present(
        h(
          "dl",
          { class: "job" },
          h("dt", {}, "Type"),
          h("dd", {}, current.type),
          h("dt", {}, "State"),
          h("dd", { id: "job-state" }, stateBadge(current)),
          h("dt", {}, "Progress"),
          h("dd", {}, progressBar(current, "Job progress")),
          h("dt", {}, "Stage"),
          h("dd", { id: "job-stage" }, current.progress?.stage ?? ""),
          h("dt", {}, "Message"),
          h("dd", { id: "job-message" }, current.progress?.message ?? ""),
          h("dt", {}, "Attempts"),
          h("dd", {}, `${current.attempt} of ${current.maxAttempts}`),
          h("dt", {}, "Worker"),
          h("dd", {}, current.workerId),
          h("dt", {}, "Created"),
          h("dd", {}, when(current.createTime)),
          h("dt", {}, "Started"),
          h("dd", {}, when(current.startTime)),
          h("dt", {}, "Ended"),
          h("dd", {}, when(current.endTime)),
          h("dt", {}, "Labels"),
          h(
            "dd",
            {},
            Object.entries(current.labels)
              .map(([k, v]) => `${k}=${v}`)
              .join(", "),
          ),
          h("dt", {}, "Actions"),
          h(
            "dd",
            {},
            actions(current, () => {
              if (!isTerminalState(current.state)) return;
              void follow(); // a retried job's stream had ended: follow it again
            }),
          ),
        ),
        h("h3", {}, "Payload"),
        h("pre", { id: "job-payload" }, json(current.payload)),
        error !== undefined &&
          h(
            "section",
            { class: "error", "aria-labelledby": "error-heading" },
            h("h3", { id: "error-heading" }, "Error"),
            h(
              "p",
              { id: "job-error" },
              h("code", {}, error.code),
              " ",
              error.message,
              error.retryable ? " (retryable)" : "",
            ),
            error.details !== "" && h("pre", { id: "job-traceback" }, error.details),
          ),
        current.state === JobState.SUCCEEDED && h("h3", {}, "Result"),
        current.state === JobState.SUCCEEDED &&
          h("pre", { id: "job-result" }, json(current.result)),
      ),
    );
    history.replaceChildren(
      ...events.map((event) =>
        h(
          "tr",
          {},
          h("td", {}, String(event.sequence)),
          h("td", {}, when(event.time)),
          h("td", {}, eventKindName(event.kind)),
          h("td", {}, event.job ? stateName(event.job.state) : ""),
          h("td", {}, event.job?.progress ? `${Math.round(event.job.progress.percent)}%` : ""),
          h("td", {}, event.job?.progress?.message ?? ""),
        ),
      ),
    );
  };
  render = () => {};
  show();
  void follow();
}

function workersView(main: HTMLElement, signal: AbortSignal): void {
  const rows = h("tbody");
  const status = h("p", { class: "count", role: "status" });
  main.replaceChildren(
    h("h2", {}, "Workers"),
    h(
      "p",
      { class: "note" },
      `Re-read every ${WORKERS_REFRESH_MS / 1000} s (workers have no stream).`,
    ),
    status,
    h(
      "table",
      { id: "workers" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["Worker", "Host", "State", "Types", "Slots", "Last heartbeat"].map((name) =>
            h("th", { scope: "col" }, name),
          ),
        ),
      ),
      rows,
    ),
  );
  const load = async (): Promise<void> => {
    try {
      const { workers } = await client.raw.listWorkers({ showStopped: true }, { signal });
      rows.replaceChildren(...workers.map(workerRow));
      if (workers.length === 0)
        rows.replaceChildren(h("tr", {}, h("td", { colspan: 6 }, "No workers.")));
      status.textContent = `${workers.length} worker${workers.length === 1 ? "" : "s"}, read ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (signal.aborted) return;
      if (isUnauthenticated(error)) askForToken();
      status.textContent = `Not available: ${ConnectError.from(error).rawMessage}`;
    }
  };
  render = () => {};
  void load();
  viewTimer = window.setInterval(() => void load(), WORKERS_REFRESH_MS);
}

function workerRow(worker: Worker): HTMLElement {
  const state = (WorkerState[worker.state] ?? String(worker.state)) as string;
  const heartbeat =
    worker.heartbeatTime === undefined ? undefined : timestampDate(worker.heartbeatTime);
  const ago =
    heartbeat === undefined
      ? ""
      : `${Math.max(0, Math.round((Date.now() - heartbeat.getTime()) / 1000))} s ago`;
  return h(
    "tr",
    { "data-worker-id": worker.id, "data-state": state },
    h("td", {}, worker.name || worker.id, h("br"), h("small", {}, worker.id)),
    h("td", {}, `${worker.host} (pid ${worker.pid})`),
    h("td", {}, h("span", { class: `state worker-${state.toLowerCase()}` }, state)),
    h("td", {}, worker.jobTypes.join(", ")),
    h("td", {}, `${worker.currentJobIds.length}/${worker.concurrency} busy`),
    h(
      "td",
      {},
      heartbeat === undefined
        ? ""
        : h("time", { datetime: heartbeat.toISOString(), title: heartbeat.toLocaleString() }, ago),
    ),
  );
}

// ---- routing -------------------------------------------------------------------------

function route(): void {
  viewStream?.abort();
  const controller = new AbortController();
  viewStream = controller;
  window.clearInterval(viewTimer);
  const main = byId("main");
  const path = location.hash.replace(/^#/, "") || "/jobs";
  const jobMatch = /^\/jobs\/([^/]+)$/.exec(path);
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    const current = path.startsWith(link.getAttribute("href")!.slice(1));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  viewStreams = jobMatch !== null || path === "/workers";
  if (jobMatch) {
    document.title = "Job · JobControl";
    jobView(main, decodeURIComponent(jobMatch[1]!), controller.signal);
  } else if (path === "/workers") {
    document.title = "Workers · JobControl";
    workersView(main, controller.signal);
  } else {
    document.title = "Jobs · JobControl";
    jobsView(main);
  }
}

// ---- hidden tabs ---------------------------------------------------------------------

/**
 * A hidden tab gives its streams back: over HTTP/1.1 a browser opens at most 6
 * connections to one origin, and every open tab would otherwise hold one or two, so
 * the fourth tab would wait for a connection. Shown again, the tab resumes the job list
 * from the last sequence it saw (the server replays what it missed) and reopens its
 * view's stream.
 */
function pause(): void {
  jobsStream?.abort();
  jobsStream = undefined;
  viewStream?.abort();
  window.clearInterval(viewTimer);
  setConnection("paused while the tab is hidden", false);
}

function onVisibilityChange(): void {
  if (document.visibilityState === "hidden") {
    pause();
  } else if (jobsStream === undefined) {
    setConnection("connecting…", false);
    startJobsStream();
    if (viewStreams) route(); // the jobs view has none: its form and filters stay as they are
  }
}

function start(): void {
  byId<HTMLFormElement>("auth").addEventListener("submit", signIn);
  byId("message").addEventListener("click", (event) => {
    (event.currentTarget as HTMLElement).hidden = true;
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", onVisibilityChange);
  setConnection("connecting…", false);
  startJobsStream();
  route();
  if (document.visibilityState === "hidden") pause();
}

start();

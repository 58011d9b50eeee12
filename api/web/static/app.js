// ticketsolver web view: the jobs page (table, submit form) and the job page. Plain JavaScript, no build.
// Every piece of job data comes from the JSON API, with `Authorization: Bearer <token>` when the service
// has a token; the HTML pages themselves hold none.
"use strict";

(() => {
  const body = document.body;
  const root = body.dataset.root || "";
  const TOKEN_KEY = "ticketsolver.token";
  const ACTIVE = new Set(["queued", "running"]);
  const POLL_MS = 1000;
  let onToken = () => {};

  // --- the API, with the token -----------------------------------------------------------------------

  class AuthError extends Error {}

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    else if (body.dataset.auth === "required") {
      askForToken(""); // asking without one would only earn a 401
      throw new AuthError("the service needs its access token");
    }
    const response = await fetch(root + path, { ...options, headers });
    if (response.status === 401) {
      askForToken(token ? "the service refused this token" : "");
      throw new AuthError("the service needs its access token");
    }
    return response;
  }

  // The API's own message: `detail` as it is when a string, else one "where: what" line per error.
  async function detailOf(response) {
    const text = await response.text();
    try {
      const detail = JSON.parse(text).detail;
      if (typeof detail === "string") return detail;
      if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("\n");
      return JSON.stringify(detail);
    } catch (_) {
      return text || `HTTP ${response.status}`;
    }
  }

  function askForToken(reason) {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.hidden = false;
    document.getElementById("token-status").textContent = reason;
  }

  function setUpTokenForm() {
    const form = document.getElementById("token-form");
    if (!form) return;
    if (!localStorage.getItem(TOKEN_KEY)) askForToken("");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      localStorage.setItem(TOKEN_KEY, form.elements.token.value.trim());
      form.elements.token.value = "";
      form.hidden = true;
      onToken();
    });
    document.getElementById("token-forget").addEventListener("click", () => {
      localStorage.removeItem(TOKEN_KEY);
      askForToken("token forgotten");
    });
  }

  // --- small helpers ---------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  const num = (v, digits = 2) => (v === null || v === undefined ? "-" : typeof v === "number" ? v.toExponential(digits) : String(v));
  const count = (v) => (v === null || v === undefined ? "-" : Number(v).toLocaleString("en"));
  const fixed = (v, digits = 4) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
  const percent = (v) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(2)} %`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(seconds);
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  // Every poll waits for the previous one and skips while the tab is hidden.
  // A refused token stops the polling until a new one is given.
  function poll(refresh) {
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      let again = true;
      try {
        if (!document.hidden) again = (await refresh()) !== false;
      } catch (error) {
        again = !(error instanceof AuthError);
        if (again) console.error(error);
      } finally {
        busy = false;
      }
      if (again) setTimeout(tick, POLL_MS);
    };
    onToken = tick;
    tick();
  }

  // Downloads go through fetch so that they carry the token; the file is handed over as a blob.
  async function download(link) {
    const label = link.textContent;
    link.setAttribute("aria-busy", "true");
    link.textContent = `${label} (preparing…)`;
    try {
      const response = await api(link.dataset.path);
      if (!response.ok) throw new Error(await detailOf(response));
      const url = URL.createObjectURL(await response.blob());
      const save = el("a", { href: url, download: link.getAttribute("download") || "" });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      link.textContent = label;
    } catch (error) {
      link.textContent = `${label} (${error.message})`;
    } finally {
      link.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.download");
    if (!link) return;
    event.preventDefault();
    if (!link.hasAttribute("aria-busy")) download(link);
  });

  // --- the jobs page ---------------------------------------------------------------------------------

  function jobDetail(job) {
    const parts = [];
    if (job.layers_total) parts.push(`layers ${job.layers_done} / ${job.layers_total}`);
    parts.push(`items ${job.items_done} / ${job.items_total}`);
    parts.push(`${count(job.problems_solved)} problems solved`);
    if (job.eta_seconds !== null && job.eta_seconds !== undefined) parts.push(`ETA ${duration(job.eta_seconds)}`);
    return parts.join(" · ");
  }

  function jobRow(job) {
    const link = el("a", { class: "job-link", href: `${root}/ui/jobs/${job.id}`, text: job.id.slice(0, 8) });
    const bar = el("progress", { class: "job-progress", max: "1", value: "0" });
    const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
    cancel.addEventListener("click", () => cancelJob(job.id, cancel));
    return el(
      "tr",
      { "data-job-id": job.id },
      el("td", { class: "id" }, link),
      el("td", { class: "state" }),
      el("td", { class: "progress" }, bar, el("span", { class: "percent" })),
      el("td", { class: "detail" }),
      el("td", { class: "created" }),
      el("td", { class: "finished" }),
      el("td", { class: "actions" }, cancel),
    );
  }

  function updateRow(row, job) {
    const state = row.querySelector("td.state");
    state.textContent = job.state;
    state.className = `state state-${job.state}`;
    row.querySelector("progress.job-progress").value = job.progress;
    row.querySelector("span.percent").textContent = ` ${Math.floor(job.progress * 100)} %`;
    const detail = row.querySelector("td.detail");
    detail.textContent = jobDetail(job);
    if (job.error) detail.append(el("div", { class: "error", text: job.error }));
    if (job.message && ACTIVE.has(job.state)) detail.append(el("div", { class: "message", text: job.message }));
    row.querySelector("td.created").textContent = when(job.created_at);
    row.querySelector("td.finished").textContent = when(job.finished_at);
    row.querySelector("button.cancel").hidden = !ACTIVE.has(job.state);
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      const response = await api(`/jobs/${id}`, { method: "DELETE" });
      if (!response.ok) document.getElementById("jobs-status").textContent = await detailOf(response);
      await refreshJobs();
    } finally {
      button.disabled = false;
    }
  }

  async function refreshJobs() {
    const response = await api("/jobs/progress?limit=100");
    const status = document.getElementById("jobs-status");
    if (!response.ok) {
      status.textContent = await detailOf(response);
      return;
    }
    const { data, count: total } = await response.json();
    const tbody = document.querySelector("#jobs tbody");
    const seen = new Set();
    for (const job of data) {
      let row = tbody.querySelector(`tr[data-job-id="${job.id}"]`);
      if (!row) row = jobRow(job);
      updateRow(row, job);
      tbody.append(row); // appending an existing row moves it: the table keeps the API's order
      seen.add(job.id);
    }
    for (const row of [...tbody.rows]) if (!seen.has(row.dataset.jobId)) row.remove();
    document.getElementById("jobs-count").textContent = `(${total})`;
    status.textContent = total > data.length ? `showing the newest ${data.length} of ${total}` : total ? "" : "no jobs yet";
  }

  // A form field as JSON: numbers where the text is a number, else the text itself, so that the API
  // judges it and its message is the one shown.
  function fieldValue(text) {
    const t = text.trim();
    if (t === "") return undefined;
    return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(t) ? Number(t) : t;
  }

  // A learned-mask job: the checkpoint gives the architecture; n, build and verify do not apply.
  function learnParams(f) {
    const learn = { method: f.method.value, data: f.data.value };
    for (const name of ["keep", "width", "epochs", "seed"]) {
      const value = fieldValue(f[name].value);
      if (value !== undefined) learn[name] = value;
    }
    const params = { learn };
    if (f.arch.value) params.arch = f.arch.value;
    return params;
  }

  function jobParams(form) {
    const f = form.elements;
    if (f.learn.checked) return learnParams(f);
    const params = {};
    const n = f.n.value.includes(",") ? f.n.value.split(",").map(fieldValue) : fieldValue(f.n.value);
    if (n !== undefined) params.n = n;
    if (f.arch.value) params.arch = f.arch.value;
    const build = {};
    for (const name of ["seed", "resample"]) {
      const value = fieldValue(f[name].value);
      if (value !== undefined) build[name] = value;
    }
    const lo = fieldValue(f.input_lo.value);
    const hi = fieldValue(f.input_hi.value);
    if (lo !== undefined || hi !== undefined) build.input_domain = [lo ?? null, hi ?? null];
    build.solver = f.solver.value;
    params.build = build;
    params.verify = f.verify.checked ? {} : null;
    return params;
  }

  function setUpSubmitForm() {
    const form = document.getElementById("submit-form");
    const errors = document.getElementById("form-errors");
    const status = document.getElementById("form-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      errors.hidden = true;
      errors.textContent = "";
      status.textContent = "submitting…";
      const data = new FormData();
      for (const file of form.elements.checkpoint.files) data.append("checkpoint", file, file.name);
      data.append("params", JSON.stringify(jobParams(form)));
      try {
        const response = await api("/approximate", { method: "POST", body: data });
        if (!response.ok) {
          status.textContent = "";
          errors.textContent = await detailOf(response);
          errors.hidden = false;
          return;
        }
        const { job_id: id } = await response.json();
        form.elements.checkpoint.value = ""; // a file input adds to its selection: the next job starts afresh
        status.replaceChildren("submitted ", el("a", { class: "job-link", href: `${root}/ui/jobs/${id}`, text: `job ${id.slice(0, 8)}` }));
        await refreshJobs();
      } catch (error) {
        status.textContent = error.message;
      }
    });
  }

  // --- the job page ----------------------------------------------------------------------------------

  function flatten(value, prefix, out) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
    } else {
      out.push([prefix, value === null ? "default" : typeof value === "string" ? value : JSON.stringify(value)]);
    }
    return out;
  }

  function renderParams(params) {
    const list = el("dl", { class: "params" });
    for (const [key, value] of flatten(params, "", [])) list.append(el("dt", { text: key }), el("dd", { text: value }));
    document.getElementById("params").replaceChildren(list);
  }

  function table(cls, head, rows) {
    const thead = el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h }))));
    const tbody = el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: c })))));
    return el("table", { class: cls }, thead, tbody);
  }

  function layersTable(ticket) {
    const head = ["#", "construction", "n", "target", "usable (mean)", "max weight error", "mean weight error", "kept / source params", "source kind", "examined values"];
    const rows = ticket.layers.map((l) => [
      String(l.pair), l.construction, String(l.n), l.target_shape.join("×"),
      l.usable_mean === null || l.usable_mean === undefined ? "-" : l.usable_mean.toFixed(1),
      num(l.weight_error_max), num(l.weight_error_mean),
      `${count(l.kept_params)} / ${count(l.source_params)}`, l.source_kind, count(l.examined_values),
    ]);
    return table("layers", head, rows);
  }

  // A learned-mask ticket's random layers: shape, law, what the learned mask keeps, entries IteRand redrew.
  function learnedLayersTable(ticket) {
    const head = ["#", "kind", "shape", "law", "kept / source params", "kept", "source kind", "redrawn entries"];
    const rows = ticket.layers.map((l) => [
      String(l.pair), l.kind, l.target_shape.join("×"), (l.laws || {}).weight || "-",
      `${count(l.kept_params)} / ${count(l.source_params)}`, percent(l.kept_fraction), l.source_kind, count(l.redrawn_entries),
    ]);
    return table("layers", head, rows);
  }

  // A learned item is measured on its task (accuracy, loss on the data's test split), not against a target.
  function taskBlock(report, k) {
    const box = el("div", { class: "verification task", id: k === 0 ? "task" : `task-${k}` });
    box.append(el("h4", { text: "Task" }));
    const t = report.task;
    const learned = report.ticket.learned || {};
    const rerand = learned.rerandomization;
    const how = `${learned.method || "?"} on random network (${learned.random_network || "?"})`;
    box.append(el("p", { text: rerand ? `${how}; re-randomised every ${rerand.period} iterations at rate ${rerand.rate}: ${rerand.events} events` : how }));
    if (t) {
      const recorded = t.recorded || {};
      box.append(table("verification-table", ["", "measured", "recorded at learning"], [
        ["examples", count(t.examples), count(recorded.examples)],
        ["test accuracy", percent(t.accuracy), percent(t.recorded_accuracy)],
        ["train accuracy", "-", percent(recorded.train_accuracy)],
        ["mean cross-entropy", fixed(t.loss), fixed(recorded.test_loss)],
      ]));
      box.append(el("p", { text: `on ${t.data}, ${t.device} (${t.device_note})` }));
    }
    if (report.verification_note) box.append(el("p", { class: "note", text: report.verification_note }));
    return box;
  }

  function verificationBlock(v, k) {
    const box = el("div", { class: "verification", id: k === 0 ? "verification" : `verification-${k}` });
    box.append(el("h4", { text: "Verification" }));
    if (!v) {
      box.append(el("p", { text: "not verified: the job was submitted without verification" }));
      return box;
    }
    const b = v.input_box;
    const span = b.lo_min === b.lo_max && b.hi_min === b.hi_max ? `[${b.lo_min}, ${b.hi_min}] per feature` : `lo in [${b.lo_min}, ${b.lo_max}], hi in [${b.hi_min}, ${b.hi_max}]`;
    box.append(el("p", { text: `on ${v.device} (${v.device_note}); input box ${span} (${b.source}); random inputs: ${b.law}` }));
    const dtypes = v.dtypes;
    const rows = [];
    const metrics = [["max |f-g|", "max_abs_error", num], ["relative error max", "relative_error_max", num], ["relative error mean", "relative_error_mean", num], ["accuracy f", "accuracy_target", percent], ["accuracy g", "accuracy_pruned", percent], ["top-1 agreement", "top1_agreement", percent]];
    for (const [section, perDtype] of Object.entries(v.sections || {})) {
      const inputs = Object.values(perDtype)[0]?.n_inputs;
      for (const [label, key, fmt] of metrics) {
        const values = dtypes.map((d) => perDtype[d]?.[key]);
        if (key.startsWith("accuracy") && values.every((x) => x === null || x === undefined)) continue;
        rows.push([`${section} (${inputs} inputs): ${label}`, ...values.map((x) => fmt(x))]);
      }
    }
    if (v.worst_case && Object.keys(v.worst_case).length) rows.push(["worst case max |f-g| (gradient ascent)", ...dtypes.map((d) => num(v.worst_case[d]?.max_abs_error))]);
    const c = v.certified;
    if (c) {
      const bound = (x) => (x === null || x === undefined ? "not certified" : num(x));
      rows.push(["certified sup |f-g|, exact arithmetic", ...dtypes.map(() => bound(c.max_bound))]);
      rows.push(["certified sup |f-g|, forward pass in this dtype", ...dtypes.map((d) => bound(c.forward?.[d]?.max_bound))]);
    }
    box.append(table("verification-table", ["", ...dtypes], rows));
    if (c && c.not_certified) box.append(el("p", { class: "error", text: `not certified: ${c.not_certified}` }));
    return box;
  }

  async function loadFigure(figure, path) {
    try {
      const response = await api(path);
      if (!response.ok) throw new Error(await detailOf(response));
      const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
      const svg = doc.documentElement;
      if (svg.nodeName !== "svg") throw new Error("the figure is not an SVG document");
      figure.querySelector(".pending")?.remove();
      figure.prepend(document.importNode(svg, true));
    } catch (error) {
      figure.querySelector(".pending").textContent = error.message;
    }
  }

  function plot(cls, caption, path) {
    const figure = el("figure", { class: `plot ${cls}` }, el("p", { class: "pending", text: "drawing…" }), el("figcaption", { text: caption }));
    loadFigure(figure, path);
    return figure;
  }

  function downloads(jobId, k, label) {
    const base = `/jobs/${jobId}/tickets/${k}`;
    const name = `job-${jobId.slice(0, 8)}-${k}-${label}`;
    const link = (cls, path, file, text) =>
      el("a", { class: `download ${cls}`, href: root + path, "data-path": path, download: file, text });
    return el(
      "p",
      { class: "downloads" },
      link("download-ticket", base, `${name}.ticket`, "ticket"),
      link("download-onnx", `${base}/export/onnx`, `${name}.onnx`, "ONNX"),
      link("download-safetensors", `${base}/export/safetensors`, `${name}.safetensors`, "safetensors"),
      link("download-report", `${base}/report`, `${name}.report.json`, "JSON report"),
    );
  }

  // A sweep's results, once it has stopped: the table (partial after a cancel or a failure) and the figures
  // the library drew, SVG ones shown, every one downloadable.
  async function renderSweep(section, jobId) {
    const response = await api(`/sweeps/${jobId}`);
    if (!response.ok) throw new Error(await detailOf(response));
    const sweep = await response.json();
    const name = `sweep-${jobId.slice(0, 8)}`;
    const link = (cls, path, file, text) =>
      el("a", { class: `download ${cls}`, href: root + path, "data-path": path, download: file, text });
    const links = el("p", { class: "downloads" });
    if (sweep.results_url) links.append(link("download-results", sweep.results_url, `${name}.csv`, "results.csv"));
    for (const figure of sweep.figures) links.append(link("download-figure", figure.url, `${name}-${figure.name}`, figure.name));
    section.append(el("p", { text: `rows ${sweep.rows_done} / ${sweep.rows_total}` + (sweep.skipped.length ? ` · ${sweep.skipped.length} setting(s) skipped` : "") }), links);
    for (const skipped of sweep.skipped) section.append(el("p", { class: "note", text: `skipped ${JSON.stringify(skipped.setting)}: ${skipped.reason}` }));
    for (const figure of sweep.figures.filter((f) => f.name.endsWith(".svg"))) section.append(plot("sweep-figure", figure.name, figure.url));
  }

  // learn: the job's learn section (a learned-mask job: no n, no target), else null; sweep: its sweep section
  function renderItem(container, jobId, item, report, learn, sweep) {
    let section = container.querySelector(`section.item[data-k="${item.position}"]`);
    if (!section) {
      const title = sweep ? `${item.checkpoint} · sweep of n = ${sweep.n.join(", ")} ` : learn ? `${item.checkpoint} · learned mask (${learn.method} on ${learn.data}) ` : `${item.checkpoint} · n = ${item.n} `;
      section = el("section", { class: "item", "data-k": String(item.position) },
        el("h3", { text: title }, el("span", { class: "item-state" })),
        el("p", { class: "item-detail" }));
      container.append(section);
    }
    const state = section.querySelector(".item-state");
    state.textContent = item.state;
    state.className = `item-state state-${item.state}`;
    const detail = section.querySelector(".item-detail");
    detail.textContent = item.error || (ACTIVE.has(item.state) ? `${Math.floor(item.progress * 100)} % · ${item.message}` : "");
    detail.classList.toggle("error", Boolean(item.error));
    if (sweep) {
      if (!ACTIVE.has(item.state) && !section.dataset.filled) {
        section.dataset.filled = "true";
        renderSweep(section, jobId).catch((error) => section.append(el("p", { class: "error", text: error.message })));
      }
      return;
    }
    if (report && !section.dataset.filled) {
      section.dataset.filled = "true";
      const base = `/jobs/${jobId}/tickets/${item.position}/figures`;
      const sizes = report.ticket.sizes;
      if (learn) {
        section.append(
          downloads(jobId, item.position, "learned"),
          el("p", { text: `params: target ${count(sizes.target_params)} · random source ${count(sizes.source_params)} · kept ${count(sizes.kept_params)} (${percent(sizes.kept_params / Math.max(sizes.source_params, 1))}) · source ${sizes.source_kind} · examined ${count(sizes.examined_values)} values` }),
          learnedLayersTable(report.ticket),
          taskBlock(report, item.position),
        );
        return; // no figures: they compare with a target, and a learned ticket has none
      }
      section.append(
        downloads(jobId, item.position, `n${item.n}`),
        el("p", { text: `params: target ${count(sizes.target_params)} · random source ${count(sizes.source_params)} · kept ${count(sizes.kept_params)} · source ${sizes.source_kind}` }),
        layersTable(report.ticket),
        verificationBlock(report.verification, item.position),
        plot("weight-errors", "Per-weight error |w - w_eff| of each target layer (histogram, log x axis)", `${base}/weight-errors.svg`),
      );
      if (report.verification) section.append(plot("output-errors", "Relative output error per random input of the verification", `${base}/output-errors.svg`));
    }
  }

  async function refreshJob() {
    const id = body.dataset.jobId;
    const jobResponse = await api(`/jobs/${id}`);
    const status = document.getElementById("job-status");
    if (!jobResponse.ok) {
      status.textContent = await detailOf(jobResponse);
      return jobResponse.status >= 500; // a missing job will not appear: stop polling
    }
    const job = await jobResponse.json();
    // read after the job: when the job says it has finished, the reports are at least as fresh
    const reportResponse = await api(`/jobs/${id}/report`);
    const reports = reportResponse.ok ? (await reportResponse.json()).items : [];
    const state = document.getElementById("job-state");
    state.textContent = job.state;
    state.className = `state-${job.state}`;
    document.querySelector("progress.job-progress").value = job.progress;
    const eta = job.eta_seconds === null ? "" : ` · ETA ${duration(job.eta_seconds)}`;
    document.getElementById("job-detail").textContent = `${Math.floor(job.progress * 100)} %${eta}`;
    status.textContent = job.error || (job.purged_at ? `purged ${when(job.purged_at)}: its files are gone` : "");
    if (!document.querySelector("#params dl")) renderParams(job.params);
    const container = document.getElementById("items");
    const learn = job.params.learn || null;
    const sweepSpec = job.params.sweep || null;
    for (const item of job.items) renderItem(container, id, item, job.purged_at ? null : reports[item.position], learn, sweepSpec);
    const done = reports.filter(Boolean).length;
    const sweep = document.getElementById("sweep");
    if (!learn && !sweepSpec && !ACTIVE.has(job.state) && done > 1 && !sweep.childElementCount && !job.purged_at) {
      sweep.append(el("h3", { text: "Sweep" }), plot("sweep", "Largest weight and output errors against n", `/jobs/${id}/figures/sweep.svg`));
    }
    return ACTIVE.has(job.state);
  }

  // --- start -----------------------------------------------------------------------------------------

  setUpTokenForm();
  if (body.dataset.page === "jobs") {
    setUpSubmitForm();
    poll(refreshJobs);
  } else if (body.dataset.page === "job") {
    poll(refreshJob);
  }
})();

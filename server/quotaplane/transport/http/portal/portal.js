// The usage portal: asks for the API key once (kept in this tab's sessionStorage, never in a
// URL or a cookie), calls GET /v1/usage with it, and draws the answer. No library, no build.
"use strict";

const KEY = "quotaplane.apiKey";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function show(id, visible) { $(id).hidden = !visible; }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function fmtInt(n) { return Number(n).toLocaleString("en-US"); }

function fmtWhen(iso) {
  const at = new Date(iso);
  return at.toISOString().replace("T", " ").replace(/:\d\d\.\d+Z$/, " UTC");
}

function fmtMoney(amount, currency) { return `${amount} ${currency}`; }

// What the caller should read for each answer that is not usage.
function problem(status, body) {
  if (status === 401) return { text: "This API key was not accepted. Check it and paste it again.", forget: true };
  if (status === 403 && body && body.error === "tenant_suspended")
    return { text: "This account is suspended: API calls are refused until it is resumed. Contact support.", forget: false };
  if (status === 403) return { text: `Access refused: ${(body && body.message) || "forbidden"}.`, forget: false };
  if (status === 429) return { text: "Too many requests; try again in a moment.", forget: false };
  if (status >= 500 || status === 0)
    return { text: "The usage service is unavailable right now. Try again in a minute.", forget: false };
  return { text: `Unexpected answer (${status}): ${(body && body.message) || ""}`, forget: false };
}

function fail(status, body) {
  const { text, forget } = problem(status, body);
  $("error").textContent = text;
  $("error").dataset.status = String(status);
  show("error", true);
  show("usage", false);
  if (forget) askForKey();
}

function askForKey() {
  sessionStorage.removeItem(KEY);
  show("key-form", true);
  show("forget", false);
  $("key").value = "";
  $("key").focus();
}

let currentPeriod = null;  // learnt from the first answer (the period that holds now)

async function load(period) {
  const key = sessionStorage.getItem(KEY);
  if (!key) { askForKey(); return; }
  show("key-form", false);
  show("forget", true);
  show("loading", true);
  let response, body = null;
  try {
    const query = period ? `?period=${encodeURIComponent(period)}` : "";
    response = await fetch(`/v1/usage${query}`, { headers: { "x-api-key": key }, cache: "no-store", credentials: "omit" });
    body = await response.json().catch(() => null);
  } catch (error) {
    show("loading", false);
    fail(0, null);
    return;
  }
  show("loading", false);
  if (!response.ok || !body) { fail(response.status, body); return; }
  show("error", false);
  render(body);
}

function render(usage) {
  $("tenant-name").textContent = usage.tenant.name;
  $("plan").textContent = usage.tenant.plan;
  $("period").textContent = usage.period;
  $("status").textContent = usage.tenant.status;
  renderLimits(usage.limits);
  renderChart(usage);
  renderCharges(usage.charges);
  renderSpendCap(usage.spend_cap, usage.charges);
  renderInvoices(usage.invoices);
  renderPeriods(usage);
  $("generated").textContent = `As of ${fmtWhen(usage.generated_at)}.`;
  show("usage", true);
}

function renderLimits(limits) {
  const list = $("limits");
  list.replaceChildren();
  if (!limits.length) list.append(el("li", {}, "No limits in this period."));
  for (const limit of limits) {
    const share = limit.limit > 0 ? Math.min(1, limit.used / limit.limit) : 1;
    const item = el("li", {
      "class": "limit", "data-limit": limit.name, "data-used": limit.used,
      "data-remaining": limit.remaining, "data-limit-value": limit.limit,
    });
    const head = el("div", { "class": "limit-head" });
    const title = `${limit.metric} per ${limit.window}` + (limit.mode === "shadow" ? " (trial limit, not enforced)" : "");
    head.append(el("strong", {}, title),
                el("span", { "class": "used" }, `${fmtInt(limit.used)} of ${fmtInt(limit.limit)} used`));
    const track = el("div", { "class": "track", "role": "progressbar", "aria-valuemin": "0",
                              "aria-valuemax": String(limit.limit), "aria-valuenow": String(limit.used) });
    const fill = el("div", { "class": "fill" + (share >= 1 ? " full" : share >= 0.8 ? " high" : "") });
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    track.append(fill);
    const foot = el("div", { "class": "limit-foot" });
    foot.append(el("span", { "class": "remaining" }, `${fmtInt(limit.remaining)} remaining`),
                el("span", { "class": "reset" }, `resets ${fmtWhen(limit.reset_at)}`));
    item.append(head, track, foot);
    if (limit.mode === "shadow")
      item.append(el("div", { "class": "hint shadow", "data-would-be-denials": String(limit.would_be_denials) },
                     `${fmtInt(limit.would_be_denials)} requests this period would have been refused`));
    list.append(item);
  }
}

// Every day of the period (days without usage are 0), one bar each, in an inline SVG.
function dailyPoints(usage) {
  const byDate = new Map();
  for (const days of Object.values(usage.daily))
    for (const day of days) byDate.set(day.date, (byDate.get(day.date) || 0) + day.quantity);
  const points = [];
  const end = new Date(usage.period_end);
  for (let at = new Date(usage.period_start); at < end; at = new Date(at.getTime() + 86400000)) {
    const date = at.toISOString().slice(0, 10);
    points.push({ date, quantity: byDate.get(date) || 0 });
  }
  return points;
}

function renderChart(usage) {
  const points = dailyPoints(usage);
  const width = 600, height = 220, left = 56, bottom = 30, top = 16;
  const max = Math.max(1, ...points.map((p) => p.quantity));
  const step = (width - left) / points.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `Daily usage in ${usage.period}` });
  chart.append(svg("line", { "class": "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }));
  const label = (x, y, text, anchor) => {
    const node = svg("text", { x, y, "text-anchor": anchor });
    node.textContent = text;
    chart.append(node);
  };
  label(left - 6, top + 12, fmtInt(max), "end");
  label(left - 6, height - bottom, "0", "end");
  points.forEach((point, i) => {
    const h = (point.quantity / max) * (height - bottom - top);
    const bar = svg("rect", { "class": "bar", x: (left + i * step + step * 0.15).toFixed(2),
      y: (height - bottom - h).toFixed(2), width: (step * 0.7).toFixed(2), height: h.toFixed(2),
      "data-date": point.date, "data-quantity": point.quantity });
    const title = svg("title", {});
    title.textContent = `${point.date}: ${fmtInt(point.quantity)}`;
    bar.append(title);
    chart.append(bar);
  });
  label(left, height - 4, points[0].date.slice(5), "start");
  label(width, height - 4, points[points.length - 1].date.slice(5), "end");
  $("chart").replaceChildren(chart);
}

function renderCharges(charges) {
  const box = $("charges");
  box.replaceChildren();
  if (!charges) {
    delete box.dataset.total;
    box.append(el("div", { "class": "hint" }, "No invoice for this period."));
    return;
  }
  box.dataset.total = charges.total;
  box.dataset.totalMinor = String(charges.total_minor);
  box.append(el("div", { "class": "total" }, fmtMoney(charges.total, charges.currency)),
             el("div", { "class": "hint" }, charges.estimate
               ? "Estimate: the period's draft invoice, priced as the final invoice will be."
               : `Invoice ${charges.status}.`));
  for (const line of charges.lines)
    box.append(el("div", { "class": "hint" }, `${line.description}: ${fmtMoney(line.amount, charges.currency)}`));
}

function renderSpendCap(cap, charges) {
  const box = $("charges");
  if (cap === null || cap === undefined || !charges) return;
  box.dataset.spendCap = cap;
  box.append(el("div", { "class": "hint spend-cap" },
                `Monthly spend cap: ${fmtMoney(cap, charges.currency)}; requests that would go past it are refused.`));
}

function renderInvoices(invoices) {
  const body = $("invoices");
  body.replaceChildren();
  if (!invoices.length) {
    const row = el("tr");
    row.append(el("td", { colspan: "3" }, "No invoices yet."));
    body.append(row);
  }
  for (const invoice of invoices) {
    const row = el("tr", { "data-invoice": invoice.id });
    row.append(el("td", {}, invoice.period), el("td", {}, invoice.status),
               el("td", { "class": "num" }, fmtMoney(invoice.total, invoice.currency)));
    body.append(row);
  }
}

// The periods a tenant can look at: the current one and every period with an invoice.
function renderPeriods(usage) {
  if (usage.current) currentPeriod = usage.period;
  const periods = new Set([currentPeriod, usage.period, ...usage.invoices.map((i) => i.period)]);
  periods.delete(null);
  const select = $("period-select");
  select.replaceChildren(...[...periods].sort().reverse().map((p) => el("option", { value: p }, p)));
  select.value = usage.period;
}

document.addEventListener("DOMContentLoaded", () => {
  $("period-select").addEventListener("change", (event) => load(event.target.value));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    currentPeriod = null;
    load();
  });
  $("forget").addEventListener("click", () => { show("usage", false); show("error", false); askForKey(); });
  load();
});

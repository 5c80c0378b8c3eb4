// Drives the operator console (api-worker/assets/admin/console/) in the system's headless
// Chromium (Debian's `chromium`) with playwright-core, as an operator would, against a stack
// e2e/tests/console.rs has prepared.
//
//   node e2e/browser/console.mjs CONFIG_JSON
//
// CONFIG_JSON: {api, token, actor, task (the dead-lettered task), failed_task, user_email, shots}.
// Prints one JSON line on stdout: what it saw and did, with page load times. Screenshots of each
// page go to `shots`. Exits non-zero only when it cannot drive the browser; a step that fails is
// reported ({ok: false, failed_step, error}) and judged by the Rust test.

import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2] || '{}');
if (!cfg.api || !cfg.token || !cfg.shots) {
  console.error('usage: console.mjs \'{"api":…,"token":…,"actor":…,"task":…,"shots":…}\'');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
  timeout: 60_000,
});

const report = { ok: false, browser: browser.version(), steps: [], load_ms: {}, page_ms: {}, errors_shown: [], notices: [] };
const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
const page = await context.newPage();
const consoleLines = [];
const failedRequests = [];
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`));
page.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
page.setDefaultTimeout(30_000);

let current = 'start';
const step = (name) => { current = name; report.steps.push(name); };

/** Goes to a page of the console by its hash and waits until it has loaded; returns the time. */
async function open(hash, name) {
  await page.evaluate(() => { document.querySelector('#main').dataset.state = 'stale'; });
  const t0 = Date.now();
  // the same page again: its Refresh button (a hash that does not change fires no hashchange)
  const same = await page.evaluate((h) => location.hash === h, hash);
  if (same) await page.click('#refresh');
  else await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.querySelector('#main').dataset.state));
  const ms = Date.now() - t0;
  const state = await page.$eval('#main', (m) => m.dataset.state);
  if (name) {
    report.load_ms[name] = ms;
    report.page_ms[name] = Number(await page.$eval('#main', (m) => m.dataset.ms));
  }
  return { ms, state };
}
/** Waits for the page the last action re-rendered. */
async function settled() {
  await page.waitForFunction(() => document.querySelector('#main').dataset.state === 'ready');
}
async function shot(name) {
  await page.screenshot({ path: `${cfg.shots}/${name}.png`, fullPage: true });
}
async function stats() {
  return page.$$eval('[data-stat]', (els) => Object.fromEntries(els.map((e) => [e.dataset.stat, Number(e.textContent)])));
}
const errorsText = () => page.$$eval('#errors .banner span', (els) => els.map((e) => e.textContent));
const noticesText = () => page.$$eval('#notices .banner span', (els) => els.map((e) => e.textContent));
/** Clears the banners before an action, so what it shows next is its own. */
async function clearBanners() {
  await page.evaluate(() => { document.querySelector('#notices').replaceChildren(); document.querySelector('#errors').replaceChildren(); });
}
async function lastError() {
  await page.waitForSelector('#errors .banner');
  return (await errorsText()).pop();
}
async function lastNotice() {
  await page.waitForSelector('#notices .banner');
  const all = await noticesText();
  report.notices.push(all[all.length - 1]);
  return all[all.length - 1];
}
/** Confirms (or cancels) the console's confirmation dialog; returns its title and text. */
async function answer(ok) {
  await page.waitForSelector('#confirm[open]');
  const seen = { title: await page.textContent('#confirm-title'), text: await page.textContent('#confirm-text') };
  await page.click(ok ? '#confirm-ok' : '#confirm-cancel');
  await page.waitForSelector('#confirm:not([open])', { state: 'attached' });
  return seen;
}
async function filter(fields) {
  for (const [name, value] of Object.entries(fields)) {
    const el = await page.$(`form.filters [name="${name}"]`);
    const tag = await el.evaluate((e) => e.tagName);
    if (tag === 'SELECT') await el.selectOption(value);
    else await el.fill(value);
  }
  await page.evaluate(() => { document.querySelector('#main').dataset.state = 'stale'; });
  await page.click('form.filters button[type=submit]');
  await settled();
}

const started = Date.now();
try {
  step('sign in: refused with a wrong token, the error shown');
  let t0 = Date.now();
  await page.goto(`${cfg.api}/admin/console`, { waitUntil: 'load' });
  await page.waitForSelector('#signin[open]');
  report.load_ms.signin_page = Date.now() - t0;
  await page.fill('#signin-token', 'not-the-admin-token');
  await page.fill('#signin-actor', cfg.actor);
  await page.click('#signin-submit');
  await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0);
  report.signin_error = await page.textContent('#signin-error');
  report.token_kept_after_refusal = await page.evaluate(() => sessionStorage.getItem('edgeline.console.token'));

  step('sign in with the admin token and a name');
  await page.fill('#signin-token', cfg.token);
  await page.fill('#signin-actor', cfg.actor);
  t0 = Date.now();
  await page.click('#signin-submit');
  await page.waitForFunction(() => document.querySelector('#main').dataset.state === 'ready' && document.querySelector('#main').dataset.page === 'overview');
  report.load_ms.overview_after_signin = Date.now() - t0;
  report.storage = await page.evaluate(() => ({
    session: Object.keys(sessionStorage), local: Object.keys(localStorage), who: document.querySelector('#who').textContent,
  }));

  step('overview: a fresh load of the whole page');
  t0 = Date.now();
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('#main').dataset.state === 'ready');
  report.load_ms.overview_cold = Date.now() - t0;
  report.page_ms.overview_cold = Number(await page.$eval('#main', (m) => m.dataset.ms));
  report.stats_first = await stats();
  report.backlog = await page.textContent('[data-section=backlog]');
  report.charts = await page.$$eval('[data-chart] svg.chart', (svgs) => svgs.length);
  await shot('overview');

  step('dead letters: find the dead-lettered task by filter');
  await open('#/dead-letters', 'dead-letters');
  await filter({ type: 'task.submit', error_class: 'server_error', status: 'dead' });
  report.listed_dead_letters = await page.$$eval('a[data-dead-letter]', (as) => as.map((a) => a.dataset.deadLetter));
  await shot('dead-letters');

  step('dead letters: dry-run the replay of the filter, confirm, replay');
  await clearBanners();
  await page.click('#bulk-replay');
  report.replay_confirm = await answer(true);
  report.replay_notice = await lastNotice();
  await settled();

  step('the task completes: its page reloads itself while the task is live');
  await open(`#/tasks/${cfg.task}`, 'task');
  await page.waitForFunction(() => {
    const s = document.querySelector('section[data-task]');
    return s && ['completed', 'failed'].includes(s.dataset.status);
  }, null, { timeout: 90_000 });
  const status = await page.$eval('section[data-task]', (s) => s.dataset.status);
  report.task_status = status;
  report.timeline = await page.$$eval('[data-section=timeline] li', (lis) => lis.map((li) => ({ kind: li.dataset.kind, text: li.textContent })));
  report.task_objects = await page.$$eval('section[data-task] table code', (cs) => cs.map((c) => c.textContent).filter((t) => t.startsWith('result/')));
  await shot('task');

  step('the replayed dead letter shows who replayed it');
  const dlId = report.listed_dead_letters[0];
  await open(`#/dead-letters/${encodeURIComponent(dlId)}`, 'dead-letter');
  report.replayed_letter = {
    status: await page.$eval('section[data-dead-letter]', (s) => s.dataset.status),
    history: await page.$$eval('section[data-dead-letter] table tbody tr', (trs) => trs.map((tr) => tr.textContent)),
  };
  await shot('dead-letter');

  step('discard with a confirmation: cancel first (nothing changes), then confirm');
  await open('#/dead-letters', 'dead-letters-2');
  await filter({ error_class: 'parse_error', status: 'dead' });
  report.parse_errors_listed = (await page.$$eval('a[data-dead-letter]', (as) => as.length));
  await clearBanners();
  await page.click('#bulk-discard');
  report.discard_cancelled = await answer(false);
  report.discard_cancel_notice = await lastNotice();
  report.parse_errors_after_cancel = (await page.$$eval('a[data-dead-letter]', (as) => as.length));
  await clearBanners();
  await page.evaluate(() => { document.querySelector('#main').dataset.state = 'stale'; });
  await page.click('#bulk-discard');
  report.discard_confirm = await answer(true);
  report.discard_notice = await lastNotice();
  await settled();
  report.parse_errors_after_discard = (await page.$$eval('a[data-dead-letter]', (as) => as.length));

  step('bad input and API errors are shown');
  await open('#/tasks', 'tasks');
  await clearBanners();
  await page.fill('input[name=task_id]', 'not-a-task-id');
  await page.click('form:has(input[name=task_id]) button[type=submit]');
  report.bad_input_error = await lastError();
  await open('#/tasks/00000000-0000-4000-8000-000000000000');
  report.api_error = await lastError();
  report.api_error_page_state = await page.$eval('#main', (m) => m.dataset.state);

  step('tasks: filter by status, open a failed task');
  await open('#/tasks?status=failed', 'tasks-failed');
  report.failed_tasks_listed = await page.$$eval('a[data-task]', (as) => as.map((a) => a.dataset.task));
  await shot('tasks');
  await open(`#/tasks/${cfg.failed_task}`, 'failed-task');
  report.failed_task_has_retry = (await page.$('#retry-task')) !== null;

  step('payments: webhook events, orders, users and a grant');
  await open('#/payments?tab=events', 'payments-events');
  await shot('payments-events');
  await open('#/payments?tab=orders', 'payments-orders');
  await shot('payments-orders');
  await open(`#/payments?tab=users&q=${encodeURIComponent(cfg.user_email)}`, 'payments-users');
  const userLink = await page.$eval('a[data-user]', (a) => a.dataset.user);
  await open(`#/users/${userLink}`, 'user');
  report.balance_before_grant = (await stats())['user.balance'];
  await clearBanners();
  await page.fill('#grant-form input[name=credits]', '2.5');
  await page.click('#grant-form button[type=submit]');
  report.bad_grant_error = await lastError();
  await clearBanners();
  await page.fill('#grant-form input[name=credits]', '5');
  await page.fill('#grant-form input[name=note]', 'console e2e');
  await page.evaluate(() => { document.querySelector('#main').dataset.state = 'stale'; });
  await page.click('#grant-form button[type=submit]');
  report.grant_confirm = await answer(true);
  report.grant_notice = await lastNotice();
  await settled();
  report.user_id = userLink;
  report.balance_after_grant = (await stats())['user.balance'];
  await shot('user');

  step('cron: run a job now, see its run');
  await open('#/cron', 'cron');
  await clearBanners();
  await page.evaluate(() => { document.querySelector('#main').dataset.state = 'stale'; });
  await page.click('button[data-run=expire_orders]');
  report.cron_notice = await lastNotice();
  await settled();
  report.cron_rows = await page.$$eval('[data-section=runs] tbody tr', (trs) => trs.map((tr) => tr.textContent));
  await shot('cron');

  step('audit report');
  await open('#/audit', 'audit');
  await shot('audit');

  step('overview again: the numbers to compare with the API');
  await open('#/overview', 'overview');
  report.stats_final = await stats();
  await shot('overview-final');
  report.ok = true;
} catch (e) {
  report.failed_step = current;
  report.error = String(e && e.stack ? e.stack : e);
  await page.screenshot({ path: `${cfg.shots}/failure.png`, fullPage: true }).catch(() => {});
}
report.ms = Date.now() - started;
report.console = consoleLines;
report.failed_requests = failedRequests;
await context.close();
await browser.close();
console.log(JSON.stringify(report));

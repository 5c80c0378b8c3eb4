// Drives the system's headless Chromium (Debian's `chromium`) with playwright-core through the
// page e2e/tests/browser.rs serves (e2e/browser/page.html), once from an allowed origin and once
// from a disallowed one.
//
//   node e2e/browser/cors.mjs ALLOWED_PAGE_URL DISALLOWED_PAGE_URL SCREENSHOT_DIR
//
// Prints one JSON line on stdout: {"allowed": report, "disallowed": report}, each the page's own
// report plus what the browser logged (console messages, failed requests). Screenshots go to
// SCREENSHOT_DIR/{allowed,disallowed}.png. Exits non-zero only when it cannot drive the browser;
// judging the reports is the Rust test's job.

import { chromium } from 'playwright-core';

const [allowedUrl, disallowedUrl, shots] = process.argv.slice(2);
if (!allowedUrl || !disallowedUrl || !shots) {
  console.error('usage: cors.mjs ALLOWED_PAGE_URL DISALLOWED_PAGE_URL SCREENSHOT_DIR');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
  ],
  timeout: 60_000,
});

const out = { browser: browser.version() };
try {
  for (const [name, url] of [['allowed', allowedUrl], ['disallowed', disallowedUrl]]) {
    // a context of its own per page: no shared cache of preflights or images
    const context = await browser.newContext();
    const page = await context.newPage();
    const consoleLines = [];
    const failed = [];
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`));
    page.on('requestfailed', (r) => failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
    const started = Date.now();
    let report;
    try {
      await page.goto(url, { timeout: 30_000 });
      await page.waitForSelector('body[data-done]', { state: 'attached', timeout: 120_000 });
      report = JSON.parse(await page.textContent('#report'));
    } catch (e) {
      report = { ok: false, error: `driving the page: ${e}` };
    }
    report.ms = Date.now() - started;
    report.console = consoleLines;
    report.failed_requests = failed;
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true }).catch((e) => {
      report.screenshot_error = String(e);
    });
    out[name] = report;
    await context.close();
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');

// edgeline operator console: a page bundle served by the api worker (Workers static assets) that
// talks only to the admin API of the same origin. No framework, no CDN, no build step.
//
// The admin token is kept in sessionStorage (this tab only) and the operator's name is sent as
// X-Actor, so every change in the audit trail names them. Every API error and every bad input is
// shown in the banner at the top: nothing is swallowed.
'use strict';

(() => {
  const TOKEN_KEY = 'edgeline.console.token';
  const ACTOR_KEY = 'edgeline.console.actor';
  const ACTOR_RE = /^[A-Za-z0-9._@-]{1,64}$/;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  // The scheduled jobs by cron expression, as shared/src/schedule.rs lists them (the console's
  // browser test checks the two agree).
  const SCHEDULES = [
    ['*/5 * * * *', ['expire_orders', 'expire_subscriptions', 'reconcile_tasks', 'reconcile_events', 'clear_kv_keys', 'audit_ledger']],
    ['17 3 * * *', ['clean_r2_cache', 'retention']],
  ];
  const TASK_STATUSES = ['pending', 'submitted', 'processing', 'completed', 'failed'];
  const DL_STATUSES = ['dead', 'replayed', 'discarded'];
  const EVENT_STATUSES = ['received', 'applied', 'ignored', 'rejected'];
  const ORDER_STATUSES = ['pending', 'paid', 'processing', 'completed', 'refunding', 'refunded', 'cancelled', 'expired'];

  const $ = (sel) => document.querySelector(sel);
  const main = () => $('#main');

  // ---------------------------------------------------------------------------------------------
  // DOM
  // ---------------------------------------------------------------------------------------------

  /** An element; text children are text nodes (never parsed as HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }
  const link = (href, text, attrs) => h('a', { href, ...(attrs || {}) }, text);
  const badge = (status) => h('span', { class: `badge ${status || ''}` }, status || '—');
  const num = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
  /** A number the browser test compares with the API: plain digits in a data-stat element. */
  const stat = (key, n) => h('span', { class: 'stat', 'data-stat': key }, String(n ?? 0));

  function table(headers, rows, empty) {
    if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing here.');
    return h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { class: x.startsWith('#') ? 'num' : null }, x.replace(/^#/, ''))))),
      h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c, i) =>
        h('td', { class: headers[i] && headers[i].startsWith('#') ? 'num' : null }, c))))));
  }
  function kv(pairs) {
    return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
  }
  const pre = (value) => h('pre', {}, typeof value === 'string' ? value : JSON.stringify(value, null, 2));

  // ---------------------------------------------------------------------------------------------
  // Time
  // ---------------------------------------------------------------------------------------------

  /** Unix seconds (or milliseconds when ms) as "2026-11-29 21:04:05" (UTC). */
  function time(t, ms) {
    if (t === null || t === undefined || t === '') return '—';
    const d = new Date(ms ? Number(t) : Number(t) * 1000);
    return Number.isNaN(d.getTime()) ? String(t) : d.toISOString().replace('T', ' ').slice(0, 19);
  }
  function ago(t, ms) {
    if (t === null || t === undefined) return '';
    const secs = Math.round(Date.now() / 1000 - (ms ? t / 1000 : t));
    if (secs < 0) return `in ${duration(-secs)}`;
    return `${duration(secs)} ago`;
  }
  function duration(secs) {
    if (secs < 90) return `${secs} s`;
    if (secs < 5400) return `${Math.round(secs / 60)} min`;
    if (secs < 129600) return `${Math.round(secs / 3600)} h`;
    return `${Math.round(secs / 86400)} d`;
  }
  const when = (t, ms) => h('span', { title: ago(t, ms) }, time(t, ms));

  // ---------------------------------------------------------------------------------------------
  // Errors and notices: shown until dismissed, never swallowed
  // ---------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(method, path, status, code, message, field) {
      super(message);
      Object.assign(this, { method, path, status, code, field });
    }
    describe() {
      const where = this.status ? `${this.method} ${this.path} answered ${this.status}` : `${this.method} ${this.path} failed`;
      return `${where}: ${this.code}: ${this.message}${this.field ? ` (field: ${this.field})` : ''}`;
    }
  }
  class InputError extends Error {
    constructor(field, message) { super(message); this.field = field; }
    describe() { return `Invalid ${this.field}: ${this.message}`; }
  }

  function banner(container, text, kind) {
    const el = h('div', { class: 'banner', 'data-kind': kind },
      h('span', {}, text),
      h('button', { type: 'button', title: 'Dismiss', onclick: () => el.remove() }, '×'));
    $(container).append(el);
    return el;
  }
  function showError(e) {
    const text = e && typeof e.describe === 'function' ? e.describe() : `Unexpected error: ${e && e.message ? e.message : e}`;
    console.error(text);
    banner('#errors', text, 'error');
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) signIn(text);
  }
  function notice(text) {
    const all = $('#notices').children;
    while (all.length >= 4) all[0].remove();
    return banner('#notices', text, 'notice');
  }
  /** A new page starts without the last page's errors; notices of what was done stay. */
  const clearErrors = () => $('#errors').replaceChildren();
  function clearBanners() {
    clearErrors();
    $('#notices').replaceChildren();
  }
  window.addEventListener('error', (ev) => showError(ev.error || ev.message));
  window.addEventListener('unhandledrejection', (ev) => showError(ev.reason));

  /** Runs an operator's action: its error goes to the banner; the button is off meanwhile. */
  async function act(button, fn) {
    if (button) button.disabled = true;
    try {
      return await fn();
    } catch (e) {
      showError(e);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The admin API
  // ---------------------------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';
  const actor = () => sessionStorage.getItem(ACTOR_KEY) || '';

  async function api(method, path, body) {
    const headers = { authorization: `Bearer ${token()}`, 'x-actor': actor(), accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(method, path, 0, 'network_error', e.message || 'the request did not reach the API');
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      if (resp.ok) throw new ApiError(method, path, resp.status, 'unreadable_answer', `the answer is not JSON: ${text.slice(0, 200)}`);
    }
    if (!resp.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(method, path, resp.status, e.code || `http_${resp.status}`, e.message || text.slice(0, 200) || resp.statusText, e.field);
    }
    return data;
  }
  const get = (path) => api('GET', path);
  const post = (path, body) => api('POST', path, body === undefined ? {} : body);
  /** Settles a call for one section of a page: its error is shown, the rest of the page loads. */
  async function section(promise) {
    try {
      return { ok: true, value: await promise };
    } catch (e) {
      showError(e);
      return { ok: false, error: e };
    }
  }
  const failed = (r) => h('p', { class: 'error' }, `Not loaded: ${r.error.describe ? r.error.describe() : r.error}`);

  function qs(params) {
    const out = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') out.set(k, v);
    const text = out.toString();
    return text ? `?${text}` : '';
  }

  // ---------------------------------------------------------------------------------------------
  // Dialogs
  // ---------------------------------------------------------------------------------------------

  function confirmDialog(title, text, okLabel) {
    const dlg = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = okLabel || 'Confirm';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
      dlg.returnValue = 'cancel';
      dlg.showModal();
    });
  }

  function signIn(reason) {
    const dlg = $('#signin');
    $('#signin-error').textContent = reason || '';
    $('#signin-actor').value = actor();
    $('#signin-token').value = '';
    if (!dlg.open) dlg.showModal();
    $('#signin-token').focus();
  }

  async function submitSignIn(ev) {
    ev.preventDefault();
    const t = $('#signin-token').value.trim();
    const a = $('#signin-actor').value.trim();
    if (!t) { $('#signin-error').textContent = 'Enter the admin token.'; return; }
    if (!ACTOR_RE.test(a)) { $('#signin-error').textContent = 'Your name: 1-64 characters of letters, digits and . _ @ -'; return; }
    sessionStorage.setItem(TOKEN_KEY, t);
    sessionStorage.setItem(ACTOR_KEY, a);
    $('#signin-submit').disabled = true;
    try {
      await get('/admin/cron/runs?limit=1');
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      $('#signin-error').textContent = e.describe ? e.describe() : String(e);
      return;
    } finally {
      $('#signin-submit').disabled = false;
    }
    $('#signin').close();
    clearBanners();
    showWho();
    render();
  }

  function showWho() {
    $('#who').textContent = token() ? `signed in as ${actor()}` : '';
    $('#signout').hidden = !token();
  }

  // ---------------------------------------------------------------------------------------------
  // Charts (hand-drawn SVG)
  // ---------------------------------------------------------------------------------------------

  function chart(win, name) {
    const W = 640, H = 170, L = 34, R = 8, T = 10, B = 22;
    const b = win.buckets;
    const max = Math.max(1, ...b.map((x) => Math.max(x.completed + x.failed, x.created)));
    const bw = (W - L - R) / b.length;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${name}: tasks created, completed and failed` });
    svg.append(s('line', { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: '#c8cdd6' }));
    svg.append(s('text', { x: 2, y: T + 8 }, String(max)), s('text', { x: 2, y: y(0) }, '0'));
    const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);
    svg.append(s('text', { x: L, y: H - 6 }, hhmm(b[0].start)), s('text', { x: W - R - 60, y: H - 6 }, `${hhmm(b[b.length - 1].start)} UTC`));
    const points = [];
    b.forEach((x, i) => {
      const x0 = L + i * bw + bw * 0.15, w = bw * 0.7;
      const g = s('g', {}, s('title', {}, `${time(x.start)}: ${x.created} created, ${x.completed} completed, ${x.failed} failed`));
      if (x.completed) g.append(s('rect', { x: x0, y: y(x.completed), width: w, height: y(0) - y(x.completed), fill: '#1f8a4c' }));
      if (x.failed) g.append(s('rect', { x: x0, y: y(x.completed + x.failed), width: w, height: y(x.completed) - y(x.completed + x.failed), fill: '#c2352b' }));
      g.append(s('rect', { x: L + i * bw, y: T, width: bw, height: H - T - B, fill: 'transparent' }));
      svg.append(g);
      points.push(`${L + i * bw + bw / 2},${y(x.created)}`);
    });
    svg.append(s('polyline', { points: points.join(' '), fill: 'none', stroke: '#2f5bd3', 'stroke-width': 2 }));
    return svg;
  }
  const legend = () => h('div', { class: 'legend' },
    h('span', {}, h('i', { style: 'background:#2f5bd3' }), 'created'),
    h('span', {}, h('i', { style: 'background:#1f8a4c' }), 'completed'),
    h('span', {}, h('i', { style: 'background:#c2352b' }), 'failed'));

  // ---------------------------------------------------------------------------------------------
  // Pages
  // ---------------------------------------------------------------------------------------------

  async function overview() {
    const [stats, runs, audit] = await Promise.all([
      section(get('/admin/stats')),
      section(get('/admin/cron/runs?limit=10')),
      section(get('/admin/audit')),
    ]);
    const page = h('section', {}, h('h1', {}, 'Overview'));
    if (stats.ok) {
      const st = stats.value;
      page.append(
        h('h2', {}, 'Tasks by status ', link('#/tasks', 'all tasks')),
        h('div', { class: 'grid' },
          TASK_STATUSES.map((status) => h('a', { class: 'card', href: `#/tasks?status=${status}` },
            h('div', { class: 'label' }, status), stat(`tasks.${status}`, st.tasks.by_status[status]))),
          h('a', { class: 'card', href: '#/tasks' }, h('div', { class: 'label' }, 'total'), stat('tasks.total', st.tasks.total))),
        h('h2', {}, 'Throughput and failures'),
        legend(),
        h('div', { class: 'grid2' },
          ['hour', 'day'].map((w) => {
            const win = st.throughput[w];
            return h('div', { class: 'card', 'data-chart': w },
              h('div', { class: 'label' }, w === 'hour' ? 'last hour (5-minute buckets)' : 'last day (hourly)'),
              h('p', {}, stat(`${w}.created`, win.created), ' created · ',
                h('a', { href: '#/tasks?status=completed' }, stat(`${w}.completed`, win.completed)), ' completed · ',
                h('a', { href: '#/tasks?status=failed' }, stat(`${w}.failed`, win.failed)), ' failed'),
              chart(win, w));
          })),
        h('h2', {}, 'Queue backlog'),
        h('div', { class: 'card', 'data-section': 'backlog' },
          st.queue_backlog === null
            ? [h('strong', {}, 'Not reported by the platform. '), h('span', { class: 'muted' }, st.queue_backlog_note)]
            : pre(st.queue_backlog)),
        h('h2', {}, 'Dead letters by error class ', link('#/dead-letters?status=dead', `${num(st.dead_letters.dead)} dead`)),
        h('p', { hidden: true }, stat('dl.dead', st.dead_letters.dead)),
        table(['error class', '#dead', '#replayed', '#discarded', '#total'],
          st.dead_letters.by_class.map((c) => [
            link(`#/dead-letters${qs({ error_class: c.error_class })}`, c.error_class),
            link(`#/dead-letters${qs({ error_class: c.error_class, status: 'dead' })}`, stat(`dl.${c.error_class}.dead`, c.dead)),
            stat(`dl.${c.error_class}.replayed`, c.replayed),
            stat(`dl.${c.error_class}.discarded`, c.discarded),
            stat(`dl.${c.error_class}.total`, c.total),
          ]), 'No dead letters.'),
        h('h2', {}, 'Webhook events ', link('#/payments?tab=events', 'all events')),
        h('div', { class: 'grid' }, EVENT_STATUSES.map((status) => h('a', { class: 'card', href: `#/payments?tab=events&status=${status}` },
          h('div', { class: 'label' }, status), stat(`events.${status}`, st.webhook_events.by_status[status] || 0)))),
      );
    } else page.append(failed(stats));

    page.append(h('h2', {}, 'Last cron runs ', link('#/cron', 'all runs')));
    page.append(runs.ok ? cronTable(runs.value.runs) : failed(runs));

    page.append(h('h2', {}, 'Ledger audit ', link('#/audit', 'the report')));
    if (audit.ok) {
      const a = audit.value;
      page.append(h('div', { class: 'card', 'data-section': 'audit' },
        a.ok ? badge('ok') : badge('bad'), ' ',
        stat('audit.violations', a.violations.length), ` violations over ${num(a.ledger_rows)} ledger rows (checked in ${a.ms} ms)`,
        a.violations.length ? h('ul', {}, a.violations.slice(0, 10).map((v) => h('li', {}, h('code', {}, v.check), ': ', subjectLink(v.subject)))) : null,
        a.violations.length > 10 ? link('#/audit', `and ${a.violations.length - 10} more`) : null));
    } else page.append(failed(audit));
    return page;
  }

  /** A link to whatever an id names (tasks and users are UUIDs: try the task first). */
  function subjectLink(subject) {
    const text = String(subject);
    const m = text.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i);
    if (/^(task|ai_task)/i.test(text) && m) return link(`#/tasks/${m[0]}`, text);
    if (/^user/i.test(text) && m) return link(`#/users/${m[0]}`, text);
    if (/^ord/i.test(text)) return link(`#/payments?tab=orders`, text);
    if (m) return link(`#/tasks/${m[0]}`, text);
    return text;
  }

  function cronTable(runs) {
    return table(['job', 'schedule', 'started (UTC)', '#took', '#examined', '#changed', '#errors', 'notes'],
      runs.map((r) => [
        link(`#/cron${qs({ job: r.job })}`, r.job), r.schedule, when(r.started_at, true),
        r.finished_at ? `${num(r.finished_at - r.started_at)} ms` : 'running',
        num(r.examined), num(r.changed),
        r.errors ? h('span', { class: 'error' }, num(r.errors)) : '0',
        [r.error_text ? h('span', { class: 'error' }, r.error_text) : null, r.stopped_early ? ' stopped early (continues next run)' : null],
      ]), 'No runs recorded yet.');
  }

  // --- dead letters ----------------------------------------------------------------------------

  function dlFilterFrom(params) {
    return {
      queue: params.get('queue') || '', type: params.get('type') || '', error_class: params.get('error_class') || '',
      status: params.get('status') || '', since: params.get('since') || '', until: params.get('until') || '',
    };
  }
  /** datetime-local (UTC) <-> unix seconds. */
  const toLocalInput = (secs) => (secs ? new Date(Number(secs) * 1000).toISOString().slice(0, 16) : '');
  function fromLocalInput(field, value) {
    if (!value) return '';
    const t = Date.parse(`${value}:00Z`);
    if (Number.isNaN(t)) throw new InputError(field, `"${value}" is not a date and time`);
    return String(Math.floor(t / 1000));
  }

  function filterForm(fields, onSubmit) {
    // novalidate: the console checks input itself and says what is wrong in the banner
    const form = h('form', { class: 'filters', novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      try { onSubmit(new FormData(form)); } catch (e) { showError(e); }
    } }, fields, h('button', { type: 'submit', class: 'primary' }, 'Apply'));
    return form;
  }
  const select = (name, value, options, any) => h('label', {}, name.replace('_', ' '),
    h('select', { name }, h('option', { value: '' }, any || 'any'),
      options.map((o) => h('option', { value: o, selected: o === value }, o))));
  const input = (name, value, attrs) => h('label', {}, (attrs && attrs.label) || name.replace('_', ' '),
    h('input', { name, value: value ?? '', ...(attrs || {}), label: null }));

  async function deadLetters(params) {
    const f = dlFilterFrom(params);
    const page = h('section', {}, h('h1', {}, 'Dead letters'));
    page.append(filterForm([
      input('queue', f.queue, { placeholder: 'edgeline-tasks' }),
      input('type', f.type, { placeholder: 'task.submit' }),
      input('error_class', f.error_class, { placeholder: 'parse_error' }),
      select('status', f.status, DL_STATUSES),
      input('since', toLocalInput(f.since), { type: 'datetime-local', label: 'since (UTC)' }),
      input('until', toLocalInput(f.until), { type: 'datetime-local', label: 'until (UTC)' }),
    ], (data) => {
      const next = {
        queue: data.get('queue').trim(), type: data.get('type').trim(), error_class: data.get('error_class').trim(),
        status: data.get('status'), since: fromLocalInput('since', data.get('since')), until: fromLocalInput('until', data.get('until')),
      };
      if (next.since && next.until && Number(next.since) > Number(next.until)) throw new InputError('since', 'is after until');
      location.hash = `#/dead-letters${qs(next)}`;
    }));

    const force = h('input', { type: 'checkbox', name: 'force' });
    const bulk = (action) => async (ev) => {
      const button = ev.currentTarget;
      await act(button, async () => {
        const body = {};
        for (const [k, v] of Object.entries(f)) if (v) body[k] = k === 'since' || k === 'until' ? Number(v) : v;
        if (action === 'replay' && force.checked) body.force = true;
        const dry = await post(`/admin/dead-letters/${action}`, { ...body, dry_run: true });
        const what = describeFilter(f, action);
        if (!dry.count) { notice(`Dry run: no dead letters match ${what}; nothing to ${action}.`); return; }
        const ok = await confirmDialog(
          `${action === 'replay' ? 'Replay' : 'Discard'} ${dry.count} dead letter${dry.count === 1 ? '' : 's'}?`,
          `Dry run: ${dry.count} match ${what}${dry.more ? ' (and more: run it again for the rest)' : ''}. ` +
          (action === 'replay' ? 'They are sent again to their queues.' : 'They are marked discarded and never replayed.'),
          `${action === 'replay' ? 'Replay' : 'Discard'} ${dry.count}`);
        if (!ok) { notice(`${action} cancelled; nothing changed.`); return; }
        const done = await post(`/admin/dead-letters/${action}`, body);
        notice(`${action === 'replay' ? 'Replayed' : 'Discarded'} ${done.count} dead letter${done.count === 1 ? '' : 's'}${done.more ? '; more match: run it again' : ''}.`);
        render();
      });
    };
    page.append(h('div', { class: 'actions', 'data-section': 'bulk' },
      h('span', { class: 'muted' }, `For the whole filter (status ${f.status || 'dead'}), after a dry-run count:`),
      h('button', { type: 'button', id: 'bulk-replay', onclick: bulk('replay') }, 'Replay matching…'),
      h('label', { style: 'flex-direction:row;gap:.3rem' }, force, 'force (again if already replayed)'),
      h('button', { type: 'button', id: 'bulk-discard', class: 'danger', onclick: bulk('discard') }, 'Discard matching…')));

    const list = h('div', { 'data-section': 'list' });
    page.append(list);
    await pager(list, (cursor) => get(`/admin/dead-letters${qs({ ...f, limit: 50, cursor })}`), 'dead_letters',
      ['id', 'queue', 'type', 'error class', '#attempts', 'last failed (UTC)', 'status', 'error'],
      (d) => [link(`#/dead-letters/${encodeURIComponent(d.id)}`, d.id, { 'data-dead-letter': d.id }), d.source_queue, d.message_type || '—',
        d.error_class || '—', num(d.attempts), when(d.last_failed_at), badge(d.status), trim(d.error_text, 120)],
      'No dead letters match this filter.');
    return page;
  }
  function describeFilter(f, action) {
    const parts = Object.entries(f).filter(([, v]) => v).map(([k, v]) => `${k}=${k === 'since' || k === 'until' ? time(v) : v}`);
    if (!f.status) parts.push(`status=dead${action ? ' (default)' : ''}`);
    return parts.length ? parts.join(', ') : 'every dead letter';
  }
  const trim = (t, n) => (t && t.length > n ? `${t.slice(0, n)}…` : t || '');

  /** A table that loads pages on demand through next_cursor. */
  async function pager(container, load, key, headers, row, empty) {
    const first = await load(null);
    const rows = [...first[key]];
    let cursor = first.next_cursor;
    const draw = () => {
      const more = cursor ? h('button', { type: 'button', 'data-more': key, onclick: async (ev) => {
        await act(ev.currentTarget, async () => {
          const next = await load(cursor);
          rows.push(...next[key]);
          cursor = next.next_cursor;
          draw();
        });
      } }, 'Load more') : null;
      container.replaceChildren(table(headers, rows.map(row), empty), h('p', { class: 'muted' }, `${rows.length} shown`, cursor ? ' · ' : '', more));
    };
    draw();
  }

  async function deadLetter(params, id) {
    const d = await get(`/admin/dead-letters/${encodeURIComponent(id)}`);
    const taskId = d.body && typeof d.body === 'object' ? d.body.task_id : null;
    const force = h('input', { type: 'checkbox' });
    const page = h('section', { 'data-dead-letter': d.id, 'data-status': d.status },
      h('h1', {}, 'Dead letter ', h('code', {}, d.id), ' ', badge(d.status)),
      kv([
        ['queue', d.source_queue], ['message id', d.message_id], ['type', d.message_type],
        ['task', taskId ? link(`#/tasks/${taskId}`, taskId) : null],
        ['attempts', num(d.attempts)], ['error class', d.error_class], ['error', d.error_text],
        ['first failed', when(d.first_failed_at)], ['last failed', when(d.last_failed_at)],
        ['replayed', d.replayed_at ? [when(d.replayed_at), ` by ${d.replayed_by} (${d.replay_count} time${d.replay_count === 1 ? '' : 's'})`] : null],
        ['discarded', d.discarded_at ? [when(d.discarded_at), ` by ${d.discarded_by}`] : null],
      ]),
      h('div', { class: 'actions' },
        h('button', { type: 'button', id: 'replay-one', class: 'primary', onclick: (ev) => act(ev.currentTarget, async () => {
          if (d.status !== 'dead' && !force.checked) throw new InputError('force', `this dead letter is ${d.status}; tick "force" to send it again`);
          const r = await post(`/admin/dead-letters/${encodeURIComponent(d.id)}/replay${force.checked ? '?force=true' : ''}`);
          notice(r.sent ? `Replayed: sent to ${d.source_queue} again (replay ${r.replay_count}).` : `Not sent: it is ${r.status} already.`);
          render();
        }) }, 'Replay'),
        h('label', { style: 'flex-direction:row;gap:.3rem' }, force, 'force'),
        h('button', { type: 'button', id: 'discard-one', class: 'danger', disabled: d.status !== 'dead', onclick: (ev) => act(ev.currentTarget, async () => {
          const ok = await confirmDialog('Discard this dead letter?', `${d.message_type || 'The message'} from ${d.source_queue} will not be replayed; its task keeps its hold until its deadline.`, 'Discard');
          if (!ok) { notice('Discard cancelled; nothing changed.'); return; }
          const r = await post(`/admin/dead-letters/${encodeURIComponent(d.id)}/discard`);
          notice(r.discarded ? 'Discarded.' : 'Not discarded: it was no longer dead.');
          render();
        }) }, 'Discard…')),
      h('h2', {}, 'Body'), pre(d.body),
      h('h2', {}, 'History'),
      table(['when (UTC)', 'actor', 'action', 'detail'], (d.history || []).map((e) => [when(e.created_at), e.actor, e.action, e.detail || '']), 'No operator has acted on it.'));
    return page;
  }

  // --- tasks -----------------------------------------------------------------------------------

  async function tasks(params) {
    const status = params.get('status') || '';
    const older = params.get('older_than_secs') || '';
    const page = h('section', {}, h('h1', {}, 'Tasks'));
    page.append(filterForm([
      select('status', status, TASK_STATUSES),
      input('older_than_minutes', older ? String(Number(older) / 60) : '', { type: 'number', min: 0, step: 'any', label: 'older than (minutes)' }),
    ], (data) => {
      const mins = data.get('older_than_minutes').trim();
      if (mins && !(Number(mins) >= 0)) throw new InputError('older than', 'must be a number of minutes, 0 or more');
      location.hash = `#/tasks${qs({ status: data.get('status'), older_than_secs: mins ? Math.round(Number(mins) * 60) : '' })}`;
    }));
    const lookup = h('input', { name: 'task_id', placeholder: 'task id', size: 38 });
    page.append(h('form', { class: 'filters', novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      const id = lookup.value.trim();
      if (!UUID_RE.test(id)) { showError(new InputError('task id', `"${id}" is not a task id (a UUID)`)); return; }
      location.hash = `#/tasks/${id}`;
    } }, h('label', {}, 'open a task', lookup), h('button', { type: 'submit' }, 'Open')));
    const list = h('div', { 'data-section': 'list' });
    page.append(list);
    await pager(list, (cursor) => get(`/admin/tasks${qs({ status, older_than_secs: older, limit: 50, cursor })}`), 'tasks',
      ['task', 'status', 'model', 'user', 'created (UTC)', 'updated', 'provider id', 'failure'],
      (t) => [link(`#/tasks/${t.id}`, t.id, { 'data-task': t.id }), badge(t.status), t.model, link(`#/users/${t.user_id}`, short(t.user_id)),
        when(t.created_at), ago(t.updated_at), t.external_task_id || '—', t.failure_reason || ''],
      'No tasks match.');
    return page;
  }
  const short = (id) => (id ? `${String(id).slice(0, 8)}…` : '—');

  const LIVE = ['pending', 'submitted', 'processing'];
  const LIVE_REFRESH_MS = 2000;

  async function task(params, id) {
    if (!UUID_RE.test(id)) throw new InputError('task id', `"${id}" is not a task id (a UUID)`);
    const [t, tl] = await Promise.all([get(`/admin/tasks/${id}`), get(`/admin/tasks/${id}/timeline`)]);
    if (LIVE.includes(t.status)) refreshLater(LIVE_REFRESH_MS);
    const page = h('section', { 'data-task': t.id, 'data-status': t.status },
      h('h1', {}, 'Task ', h('code', {}, t.task_no || t.id), ' ', badge(t.status)),
      kv([
        ['id', t.id], ['user', link(`#/users/${t.user_id}`, t.user_id)], ['model', t.model], ['prompt', t.prompt], ['size', t.size],
        ['cost', `${num(t.cost)} credits`], ['provider id', t.external_task_id],
        ['provider create calls', num(tl.provider_submissions)],
        ['delivery attempts in dead letters', num(tl.dead_letter_attempts)],
        ['failure', t.failure_reason ? h('span', { class: 'error' }, t.failure_reason) : null],
        ['retry of', t.retry_of ? link(`#/tasks/${t.retry_of}`, t.retry_of) : null],
        ['deadline', when(t.deadline_at)],
      ]),
      LIVE.includes(t.status) ? h('p', { class: 'muted', 'data-live': 'true' }, `The task is ${t.status}: this page reloads every ${LIVE_REFRESH_MS / 1000} s until it ends.`) : null,
      t.status === 'failed' ? h('div', { class: 'actions' },
        h('button', { type: 'button', id: 'retry-task', class: 'primary', onclick: (ev) => act(ev.currentTarget, async () => {
          const ok = await confirmDialog('Run this task again?', `A new task is created with a new hold of ${t.cost} credits (402 if the user's balance is short).`, 'Retry');
          if (!ok) return;
          const r = await post(`/admin/tasks/${t.id}/retry`);
          notice(`${r.created ? 'Retried' : 'Already retried'} as task ${r.task.id}.`);
          location.hash = `#/tasks/${r.task.id}`;
        }) }, 'Retry…')) : null,
      h('h2', {}, 'Timeline'),
      h('ol', { class: 'timeline', 'data-section': 'timeline' }, tl.events.map((e) => h('li', { class: e.kind, 'data-kind': e.kind },
        h('span', { class: 'muted' }, time(e.at)), ' ', e.text,
        e.kind === 'dead_letter' && e.detail && e.detail.id ? [' ', link(`#/dead-letters/${encodeURIComponent(e.detail.id)}`, 'open')] : null))),
      h('h2', {}, 'Ledger'),
      table(['entry', 'type', '#amount', 'when (UTC)'], (t.ledger || []).map((r) => [h('code', {}, r.id), r.type, num(r.amount), when(r.created_at)]), 'No ledger rows.'),
      (t.consumptions || []).length ? [h('h2', {}, 'Drawn from grants'),
        table(['grant', '#amount'], t.consumptions.map((c) => [h('code', {}, c.from_record_id), num(c.amount)]))] : null,
      h('h2', {}, 'Stored objects (R2)'),
      table(['key', '#bytes', 'result'], (t.objects || []).map((o, i) => [h('code', {}, o.key), num(o.size),
        t.results && t.results[i] ? link(t.results[i].signed_url, 'open', { target: '_blank', rel: 'noopener' }) : '']), 'No stored objects.'));
    return page;
  }

  // --- payments --------------------------------------------------------------------------------

  async function payments(params) {
    const tab = params.get('tab') || 'events';
    const page = h('section', {}, h('h1', {}, 'Payments'),
      h('nav', { class: 'tabs' }, [['events', 'Webhook events'], ['orders', 'Orders'], ['users', 'Users and balances']].map(([k, label]) =>
        h('a', { href: `#/payments?tab=${k}`, class: k === tab ? 'active' : null }, label))));
    const body = h('div', { 'data-section': tab });
    page.append(body);
    if (tab === 'events') {
      const status = params.get('status') || '', type = params.get('type') || '';
      body.append(filterForm([select('status', status, EVENT_STATUSES), input('type', type, { placeholder: 'checkout.completed' })],
        (data) => { location.hash = `#/payments${qs({ tab, status: data.get('status'), type: data.get('type').trim() })}`; }));
      const r = await get(`/admin/webhook-events${qs({ status, type, limit: 200 })}`);
      body.append(table(['received (UTC)', 'provider', 'event id', 'type', 'status', 'processed', 'error'],
        r.webhook_events.map((e) => [when(e.received_at), e.provider, h('code', {}, e.event_id), e.event_type || '—', badge(e.status),
          e.processed_at ? when(e.processed_at) : '—', e.error ? h('span', { class: 'error' }, e.error) : '']), 'No webhook events match.'),
      h('p', { class: 'muted' }, `${r.webhook_events.length} shown (newest 200 at most)`));
    } else if (tab === 'orders') {
      const status = params.get('status') || '', user = params.get('user_id') || '';
      body.append(filterForm([select('status', status, ORDER_STATUSES), input('user_id', user, { size: 38, placeholder: 'user id' })],
        (data) => {
          const u = data.get('user_id').trim();
          if (u && !UUID_RE.test(u)) throw new InputError('user id', `"${u}" is not a user id (a UUID)`);
          location.hash = `#/payments${qs({ tab, status: data.get('status'), user_id: u })}`;
        }));
      const counts = await section(get('/admin/orders/stats'));
      if (counts.ok) {
        body.append(h('div', { class: 'grid' }, Object.entries(counts.value.orders).map(([k, n]) =>
          h('a', { class: 'card', href: `#/payments?tab=orders&status=${k}` }, h('div', { class: 'label' }, k), stat(`orders.${k}`, n)))));
      } else body.append(failed(counts));
      const list = h('div', {});
      body.append(h('h2', {}, 'Orders'), list);
      await pager(list, (cursor) => get(`/admin/orders${qs({ status, user_id: user, limit: 50, cursor })}`), 'orders',
        ['order', 'status', 'user', 'product', '#amount', '#credits', 'created (UTC)', 'provider ids'],
        (o) => [h('code', {}, o.id), badge(o.status), link(`#/users/${o.user_id}`, short(o.user_id)), `${o.product_id || '—'} (${o.product_kind || '?'})`,
          `${(o.amount / 100).toFixed(2)} ${o.currency}`, num(o.credits), when(o.created_at),
          [o.payment_id, o.provider_order_id, o.provider_transaction_id].filter(Boolean).join(' · ')],
        'No orders match.');
    } else {
      const q = params.get('q') || '';
      body.append(filterForm([input('q', q, { size: 40, placeholder: 'email prefix or user id', label: 'find users' })],
        (data) => { location.hash = `#/payments${qs({ tab, q: data.get('q').trim() })}`; }));
      const list = h('div', {});
      body.append(list);
      await pager(list, (cursor) => get(`/admin/users${qs({ q, limit: 50, cursor })}`), 'users',
        ['user', 'email', 'name', 'created (UTC)'],
        (u) => [link(`#/users/${u.id}`, u.id, { 'data-user': u.id }), u.email, u.name, when(u.created_at)], 'No users match.');
    }
    return page;
  }

  async function user(params, id) {
    if (!UUID_RE.test(id)) throw new InputError('user id', `"${id}" is not a user id (a UUID)`);
    const u = await get(`/admin/users/${id}`);
    const credits = h('input', { name: 'credits', type: 'number', min: 1, step: 1, required: true });
    const reference = h('input', { name: 'reference', value: `console-${Date.now()}`, size: 28 });
    const note = h('input', { name: 'note', placeholder: 'why', size: 30 });
    const expires = h('input', { name: 'expires', type: 'date' });
    const grant = h('form', { class: 'filters', id: 'grant-form', novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      act(grant.querySelector('button'), async () => {
        const n = Number(credits.value);
        if (!Number.isInteger(n) || n < 1) throw new InputError('credits', 'must be a whole number of credits, 1 or more');
        if (!reference.value.trim()) throw new InputError('reference', 'is required (a grant is made once per reference)');
        const body = { credits: n, reference: reference.value.trim() };
        if (note.value.trim()) body.note = note.value.trim();
        if (expires.value) {
          const t = Date.parse(`${expires.value}T23:59:59Z`);
          if (Number.isNaN(t)) throw new InputError('expires', 'is not a date');
          body.expires_at = Math.floor(t / 1000);
        }
        const ok = await confirmDialog(`Grant ${n} credits to ${u.email}?`, `Recorded in the ledger and the audit trail as granted by ${actor()}.`, 'Grant');
        if (!ok) return;
        const r = await post(`/admin/users/${u.id}/grants`, body);
        notice(`Granted ${r.credits} credits (${r.id}).`);
        render();
      });
    } }, h('label', {}, 'credits', credits), h('label', {}, 'reference (once per user)', reference), h('label', {}, 'note', note),
    h('label', {}, 'expires (UTC, optional)', expires), h('button', { type: 'submit', class: 'primary' }, 'Grant…'));
    return h('section', { 'data-user': u.id },
      h('h1', {}, 'User ', u.email),
      kv([['id', u.id], ['name', u.name], ['created', when(u.created_at)], ['balance', h('strong', {}, stat('user.balance', u.balance), ' credits')],
        ['tasks', Object.entries(u.tasks_by_status || {}).map(([k, n]) => `${k} ${n}`).join(' · ') || 'none'],
        ['orders', link(`#/payments?tab=orders&user_id=${u.id}`, Object.entries(u.orders_by_status || {}).map(([k, n]) => `${k} ${n}`).join(' · ') || 'none')]]),
      h('h2', {}, 'Grant credits'), grant,
      h('h2', {}, 'Ledger (newest first)'),
      table(['entry', 'type', '#amount', '#drawn', 'for', 'expires (UTC)', 'note', 'when (UTC)'],
        u.ledger.map((r) => [h('code', {}, r.id), r.type, num(r.amount), r.drawn === null ? '' : num(r.drawn),
          r.entity_type === 'task' ? link(`#/tasks/${r.entity_id}`, `task ${short(r.entity_id)}`) : `${r.entity_type || ''} ${r.entity_id || ''}`,
          r.expires_at ? when(r.expires_at) : '', r.note || '', when(r.created_at)]), 'No ledger rows.'),
      u.ledger_more ? h('p', { class: 'muted' }, 'Older rows are not shown.') : null,
      h('h2', {}, 'Subscriptions'),
      table(['id', 'plan', 'status', 'cycle', 'period from', 'until', '#credits / period'],
        u.subscriptions.map((x) => [h('code', {}, x.id), x.plan_type, badge(x.status), x.billing_cycle, when(x.current_period_start), when(x.expires_at), num(x.credits_per_period)]),
        'No subscriptions.'));
  }

  // --- cron and audit --------------------------------------------------------------------------

  async function cron(params) {
    const job = params.get('job') || '';
    const jobs = SCHEDULES.flatMap(([, js]) => js);
    const page = h('section', {}, h('h1', {}, 'Scheduled jobs'));
    page.append(h('div', { class: 'grid2' }, SCHEDULES.map(([expr, js]) => h('div', { class: 'card' },
      h('div', { class: 'label' }, `cron ${expr} (UTC)`),
      h('div', { class: 'actions' }, js.map((j) => h('button', { type: 'button', 'data-run': j, onclick: (ev) => act(ev.currentTarget, async () => {
        const r = await post(`/admin/cron/${j}`);
        const sm = r.summary || r;
        notice(`${j} ran: examined ${num(sm.examined)}, changed ${num(sm.changed)}, errors ${num(sm.errors)}${sm.stopped_early ? ', stopped early' : ''}.`);
        if (sm.errors) showError(new Error(`${j} recorded ${sm.errors} error(s): ${sm.error_text || 'see its run'}`));
        render();
      }) }, `Run ${j} now`)))))));
    page.append(filterForm([select('job', job, jobs)], (data) => { location.hash = `#/cron${qs({ job: data.get('job') })}`; }));
    const r = await get(`/admin/cron/runs${qs({ job, limit: 100 })}`);
    page.append(h('div', { 'data-section': 'runs' }, cronTable(r.runs)));
    return page;
  }

  async function audit(params) {
    const stuck = params.get('stuck_secs') || '';
    const page = h('section', {}, h('h1', {}, 'Ledger audit'));
    page.append(filterForm([input('stuck_secs', stuck, { type: 'number', min: 60, max: 604800, placeholder: '3600', label: 'stuck after (seconds)' })], (data) => {
      const v = data.get('stuck_secs').trim();
      if (v && !(Number.isInteger(Number(v)) && Number(v) >= 60 && Number(v) <= 604800)) throw new InputError('stuck after', 'must be 60 to 604800 seconds');
      location.hash = `#/audit${qs({ stuck_secs: v })}`;
    }));
    const a = await get(`/admin/audit${qs({ stuck_secs: stuck })}`);
    page.append(h('p', {}, a.ok ? badge('ok') : badge('bad'), ` ${a.violations.length} violations over ${num(a.ledger_rows)} ledger rows, checked in ${a.ms} ms.`),
      table(['check', 'what it holds', '#violations'], a.checks.map((c) => [h('code', {}, c.name), c.description,
        [num(c.violations), c.capped ? ' (capped: there may be more)' : '']])),
      h('h2', {}, 'Violations'),
      a.violations.length ? h('div', {}, a.violations.map((v) => h('div', { class: 'card', style: 'margin-bottom:.6rem' },
        h('strong', {}, v.check), ': ', subjectLink(v.subject), pre(v.detail)))) : h('p', { class: 'muted' }, 'None.'));
    return page;
  }

  // ---------------------------------------------------------------------------------------------
  // Routing
  // ---------------------------------------------------------------------------------------------

  const ROUTES = [
    [/^\/overview$/, 'overview', overview],
    [/^\/dead-letters$/, 'dead-letters', deadLetters],
    [/^\/dead-letters\/([^/]+)$/, 'dead-letters', deadLetter],
    [/^\/tasks$/, 'tasks', tasks],
    [/^\/tasks\/([^/]+)$/, 'tasks', task],
    [/^\/payments$/, 'payments', payments],
    [/^\/users\/([^/]+)$/, 'payments', user],
    [/^\/cron$/, 'cron', cron],
    [/^\/audit$/, 'audit', audit],
  ];
  let renderSeq = 0;

  /** Renders the current page again after `ms`, unless the operator has moved on by then. */
  function refreshLater(ms) {
    const seq = renderSeq;
    setTimeout(() => { if (seq === renderSeq && !$('#confirm').open) render(); }, ms);
  }

  async function render() {
    showWho();
    if (!token()) { signIn(); return; }
    const raw = location.hash.replace(/^#/, '') || '/overview';
    const [path, query] = raw.split('?');
    const params = new URLSearchParams(query || '');
    const route = ROUTES.map(([re, nav, fn]) => [path.match(re), nav, fn]).find(([m]) => m);
    const seq = ++renderSeq;
    const el = main();
    const started = performance.now();
    el.dataset.state = 'loading';
    $('#timing').textContent = '';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', route && a.dataset.nav === route[1]);
    if (!route) {
      el.replaceChildren(h('p', { class: 'error' }, `No page at ${path}.`), link('#/overview', 'Overview'));
      el.dataset.state = 'error';
      return;
    }
    const [m, nav, fn] = route;
    el.dataset.page = nav;
    try {
      const node = await fn(params, ...m.slice(1).map(decodeURIComponent));
      if (seq !== renderSeq) return;
      el.replaceChildren(node);
      el.dataset.state = 'ready';
    } catch (e) {
      if (seq !== renderSeq) return;
      el.replaceChildren(h('p', { class: 'error' }, 'This page could not be loaded: ', e.describe ? e.describe() : String(e)));
      el.dataset.state = 'error';
      showError(e);
    }
    const ms = Math.round(performance.now() - started);
    el.dataset.ms = String(ms);
    $('#timing').textContent = `${nav} loaded in ${ms} ms`;
  }

  window.addEventListener('hashchange', () => { clearErrors(); render(); });
  document.addEventListener('DOMContentLoaded', () => {
    $('#signin-form').addEventListener('submit', submitSignIn);
    $('#signin').addEventListener('cancel', (ev) => { if (!token()) ev.preventDefault(); });
    $('#refresh').addEventListener('click', () => render());
    $('#signout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      main().replaceChildren();
      clearBanners();
      render();
    });
    render();
  });
})();

// Words and small formatters shared by the views. The meanings of close codes and states are the doctor's own
// texts (supervisor/doctor.py), served as doctor.json: one source for the CLI's doctor and this page.

let doctor = { closeCodes: {}, states: {}, networkErrors: [], reasons: {} };

export const useDoctor = (texts) => { doctor = texts; };

export async function loadDoctor() {
  try {
    const r = await fetch('doctor.json', { cache: 'no-cache', credentials: 'omit' });
    if (r.ok) useDoctor(await r.json());
  } catch { /* the page still works, only without explanations */ }
}

const forTenant = (text, tid) => text.replaceAll(' T', ` ${tid}`).replaceAll('/T/', `/${tid}/`);

// {code, reason, message, at} -> {title, meaning, fix} as the doctor's last_close check says it.
export function closeText(last, tid) {
  if (!last) return null;
  const known = doctor.closeCodes[String(last.code)];
  const msg = String(last.message || '');
  const net = doctor.networkErrors.find((n) => n.needles.some((x) => msg.toLowerCase().includes(x.toLowerCase())));
  return {
    title: `${last.code ?? '—'} ${last.reason || ''}`.trim(),
    meaning: known ? known.meaning : 'unknown or no code: see the worker log',
    fix: net ? net.fix : known ? forTenant(known.fix, tid) : '',
    message: msg,
  };
}

export function stateText(state, tid) {
  const s = doctor.states[state];
  return s ? { text: s.text, fix: forTenant(s.fix, tid), verdict: s.verdict } : { text: state, fix: '', verdict: 'warn' };
}

// Baileys' reason name -> close code, for "qr → connecting · 515 restartRequired" in the event list.
export const reasonCode = (name) => doctor.reasons[name];

// Baileys' QR lifetimes (socket.js: qrTimeout unset -> the first ref lives 60 s, each later one 20 s).
export const FIRST_QR_S = 60;
export const NEXT_QR_S = 20;

// Seconds until the shown QR rotates: `nth` QR event since the tenant entered `qr` (1 = the first), or, for a QR
// first seen through the status (page opened mid-scan), `since` = when the tenant entered `qr`.
export function qrSecondsLeft({ nth = 1, since = null, now = Date.now() }) {
  if (since === null) return nth <= 1 ? FIRST_QR_S : NEXT_QR_S;
  const age = Math.max(0, (now - Date.parse(since)) / 1000);
  return age < FIRST_QR_S ? FIRST_QR_S - age : NEXT_QR_S - ((age - FIRST_QR_S) % NEXT_QR_S);
}

export function ago(iso, now = Date.now()) {
  if (!iso) return '—';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

// Times come in two shapes: the status's are ISO strings, the SSE events' `at` is epoch seconds.
export const toDate = (t) => new Date(typeof t === 'number' ? t * 1000 : t ?? Date.now());
export const clock = (t) => toDate(t).toLocaleTimeString([], { hour12: false });

// Tiny element builder: el('td', {class: 'x'}, 'text', child). Text goes in as text, never as HTML.
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

export function stateBadge(state) {
  return el('span', { class: `state st-${state}` }, state);
}

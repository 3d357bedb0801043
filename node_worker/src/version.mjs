// Which WhatsApp Web version the socket announces (BSUP_VERSION_POLICY: bundled | latest | explicit A.B.C).
const VERSION_FETCH_TIMEOUT_MS = 3000;

const timeout = (ms) => new Promise((r) => setTimeout(() => r('timeout'), ms).unref());

/** `latest` falls back to the bundled version (with a warning) when the fetch fails or takes over ~3 s. */
export async function resolveVersion(policy, { DEFAULT_CONNECTION_CONFIG, fetchLatestWaWebVersion }, logger) {
  const bundled = DEFAULT_CONNECTION_CONFIG.version;
  if (policy.policy === 'explicit') return policy.version;
  if (policy.policy === 'bundled') return bundled;
  try {
    const res = await Promise.race([
      fetchLatestWaWebVersion({ signal: AbortSignal.timeout(VERSION_FETCH_TIMEOUT_MS) }),
      timeout(VERSION_FETCH_TIMEOUT_MS + 200),
    ]);
    if (res !== 'timeout' && res?.isLatest && Array.isArray(res.version)) return res.version;
    logger.warn({ error: res === 'timeout' ? 'timeout' : res?.error, bundled }, 'could not fetch the latest WhatsApp Web version; using the bundled one');
  } catch (err) {
    logger.warn({ err, bundled }, 'could not fetch the latest WhatsApp Web version; using the bundled one');
  }
  return bundled;
}

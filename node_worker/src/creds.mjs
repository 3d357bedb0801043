// What the saved creds say about the link to the phone.

/** Linked: only pair-success (QR or code) adds `account` (the ADV identity); with `me` it means the next start logs
 *  in instead of showing a QR. `creds.registered` is no help: rc14 sets it in the pairing-code flow only, and
 *  already at companion_finish, before the link is done. The daemon's storage.creds_linked is the same test. */
export function isRegistered(creds) {
  return Boolean(creds?.account && creds?.me?.id);
}

/** requestPairingCode saves creds.me = {id: PHONE@s.whatsapp.net} (and companion_finish `registered: true`) before
 *  the phone has linked anything; only pair-success adds `account`. Baileys logs in whenever creds.me is set, so a
 *  socket that closed before pair-success (code never typed, wrong code, QR refs ran out: 408) would make every later
 *  start log in as device 0 of that number and get 401, which the daemon treats as a logout. Such creds were never
 *  linked: forget the attempt so this start registers again and shows a QR. Returns whether it dropped one. */
export function dropUnfinishedCodePairing(creds) {
  if (!creds.pairingCode || creds.account || !creds.me) return false;
  creds.me = undefined;
  creds.registered = false;
  creds.pairingCode = undefined;
  return true;
}

"""A network namespace joined to the root namespace by a veth pair, for partition tests. Everything is created here
and deleted in `delete()`: the namespace, the veth pair, its two addresses (a random /30 in 10.213.0.0/16 that no
interface uses yet) and any blackhole routes. Needs root and iproute2."""

from __future__ import annotations

import ipaddress
import random
import subprocess


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        # e.g. a container without CAP_NET_ADMIN: say so, instead of a bare CalledProcessError
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()} "
                           "(partition tests need root with CAP_NET_ADMIN and iproute2)")
    return r


class NetNs:
    def __init__(self) -> None:
        tag = f"{random.randrange(16**6):06x}"
        self.name, self.host_if, self.ns_if = f"bsup-{tag}", f"bsh{tag}", f"bsn{tag}"
        used = ip("-4", "-o", "addr").stdout
        while True:
            net = ipaddress.ip_network(f"10.213.{random.randrange(256)}.{4 * random.randrange(64)}/30")
            self.host_ip, self.ns_ip = (str(a) for a in list(net.hosts())[:2])
            if self.host_ip not in used and self.ns_ip not in used:
                break
        self.cut = False
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            ip("link", "set", self.ns_if, "netns", self.name)
            ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=self.name)
            ip("link", "set", self.ns_if, "up", ns=self.name)
            ip("link", "set", "lo", "up", ns=self.name)
        except Exception:
            self.delete()
            raise

    def second_path(self) -> tuple[str, str]:
        """(root-side, namespace-side) addresses of a second path over the same veth that `partition()` does not cut:
        two /32s with routes whose `src` pins the source address, so traffic between them never uses the blackholed
        pair. For a partition of one service (PostgreSQL on `host_ip`) while another (the WhatsApp simulator on the
        returned root-side address) stays reachable. Deleted with the veth."""
        used = ip("-4", "-o", "addr").stdout
        while True:
            net = ipaddress.ip_network(f"10.214.{random.randrange(256)}.{4 * random.randrange(64)}/30")
            host2, ns2 = (str(a) for a in list(net.hosts())[:2])
            if host2 not in used and ns2 not in used:
                break
        ip("addr", "add", f"{host2}/32", "dev", self.host_if)
        ip("addr", "add", f"{ns2}/32", "dev", self.ns_if, ns=self.name)
        ip("route", "add", f"{ns2}/32", "dev", self.host_if, "src", host2)
        ip("route", "add", f"{host2}/32", "dev", self.ns_if, "src", ns2, ns=self.name)
        return host2, ns2

    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def partition(self) -> None:
        """Both directions blackholed: packets vanish, nobody gets an RST (a one-sided cut understates the danger)."""
        ip("route", "add", "blackhole", f"{self.host_ip}/32", ns=self.name)
        ip("route", "add", "blackhole", f"{self.ns_ip}/32")
        self.cut = True

    def heal(self) -> None:
        ip("route", "del", "blackhole", f"{self.host_ip}/32", ns=self.name, check=False)
        ip("route", "del", "blackhole", f"{self.ns_ip}/32", check=False)
        self.cut = False

    def delete(self) -> None:
        self.heal()
        ip("link", "del", self.host_if, check=False)  # takes its peer with it
        ip("netns", "del", self.name, check=False)

"""Certificates and HTTPS origins for the TLS and policy integration tests.

Origins live on extra documentation addresses in `internet` (names resolve through the
namespaces' /etc/netns hosts files):

    203.0.113.10  origin.test, *.many.test, IP SAN 203.0.113.10   (valid, Origin CA)
    203.0.113.21  expired.test                                     (expired, Origin CA)
    203.0.113.22  wrong.test -> certificate says other.test         (name mismatch)
    203.0.113.23  unknown.test                                     (issued by a CA nobody trusts)
    203.0.113.24  splice.test                                      (valid, Origin CA; spliced)
"""

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed import HERE, ORIGIN_IP, tollgate_binary, wait_until

TLS_ORIGINS = {
    "203.0.113.10": ("origin.test", ["origin.test", "*.many.test"], "valid"),
    "203.0.113.21": ("expired.test", ["expired.test"], "expired"),
    "203.0.113.22": ("wrong.test", ["other.test"], "valid"),
    "203.0.113.23": ("unknown.test", ["unknown.test"], "rogue"),
    "203.0.113.24": ("splice.test", ["splice.test"], "valid"),
}


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory, cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{cn.replace(' ', '-').lower()}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _leaf(directory, stem, ca_key, ca_cert, names, ip=None, expired=False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(days=1), now + datetime.timedelta(days=20))
    sans = [x509.DNSName(n) for n in names] + ([x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TLSWorld:
    """The certificates, the origins and Tollgate's own CA for one test bed."""

    def __init__(self, bed):
        self.bed = bed
        self.dir = bed.tmp / "tls"
        self.dir.mkdir(exist_ok=True)
        origin_key, origin_cert, self.origin_ca = _ca(self.dir, "Origin CA")
        rogue_key, rogue_cert, _ = _ca(self.dir, "Rogue CA")
        specs = []
        for ip, (host, names, kind) in TLS_ORIGINS.items():
            signer = (rogue_key, rogue_cert) if kind == "rogue" else (origin_key, origin_cert)
            cert, key = _leaf(self.dir, host, *signer, names, ip=ip if host == "origin.test" else None,
                              expired=kind == "expired")
            specs += ["--serve", f"{ip}:443:{cert}:{key}"]
            if ip != ORIGIN_IP:
                bed.run_in(bed.internet, ["ip", "addr", "add", f"{ip}/24", "dev", bed.if_internet], check=True)
        hosts = "".join(f"{ip} {host}\n" for ip, (host, _, _) in TLS_ORIGINS.items() if ip != ORIGIN_IP)
        hosts += "".join(f"{ORIGIN_IP} n{i}.many.test\n" for i in range(1000))
        for ns in (bed.worker, bed.gateway):
            with open(Path("/etc/netns") / ns / "hosts", "a") as f:
                f.write(hosts)
        ready = self.dir / "origins.ready"
        stderr = open(self.dir / "origins.stderr", "wb")
        self.proc = bed.popen_in(bed.internet, [sys.executable, str(HERE / "tls_origin.py"), *specs, "--ready", ready],
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        wait_until(lambda: ready.exists() or self.proc.poll() is not None, 10, message="TLS origins ready")
        assert self.proc.poll() is None, (self.dir / "origins.stderr").read_text()
        self.ca_dir = self.dir / "tollgate-ca"
        subprocess.run([str(tollgate_binary()), "ca", "init", "--dir", str(self.ca_dir)], check=True, capture_output=True)
        self.tollgate_ca = self.ca_dir / "ca.pem"

    def config(self, **tls):
        """Tollgate config overrides that enable interception with this world's trust."""
        settings = {"upstream_ca": str(self.origin_ca), "certificate_cache_size": 100}
        settings.update(tls)
        return {"ca": {"cert": str(self.tollgate_ca), "key": str(self.ca_dir / "ca-key.pem")}, "tls": settings}

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.errors import AuthenticationError, ConfigurationError, UsageError
from secagg.hazmat.kdf import encode_fields
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import MAX_ID
from secagg.service.credentials import (
    AUTH_LABEL,
    CHALLENGE_BYTES,
    AllowList,
    ClientIdentity,
    TlsFiles,
    auth_message,
    create_deployment,
    generate_tls,
    load_ca,
    load_tls_server_credentials,
    new_challenge,
    sign_challenge,
)

SEED = b"credentials test seed"
# Client ids are the protocol's u32 ids: one bound for identities, the allow-list and the wire.
ID_RANGE = rf"\[0, {MAX_ID}\]"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls(tmp_path_factory.mktemp("other-tls"))


def _identity(client_id: int, label: str = "") -> ClientIdentity:
    rng = DeterministicRandomness(SEED).fork(f"{label}{client_id}")
    return ClientIdentity.generate(client_id, rng=rng)


# --- TLS: what the certificates say ----------------------------------------------------------


def test_generate_tls_writes_the_ca_certificate_server_certificate_and_key_but_no_ca_key(
    tls: TlsFiles,
) -> None:
    assert tls == TlsFiles.in_directory(tls.ca_cert.parent)
    assert sorted(p.name for p in tls.ca_cert.parent.iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    assert b"PRIVATE KEY" not in tls.ca_cert.read_bytes()
    assert b"PRIVATE KEY" not in tls.server_cert.read_bytes()


def test_the_server_certificate_is_directly_issued_by_the_ca(tls: TlsFiles) -> None:
    ca, server = _cert(tls.ca_cert), _cert(tls.server_cert)
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)  # self-signed


def test_the_server_certificate_is_not_issued_by_another_deployments_ca(
    tls: TlsFiles, other_tls: TlsFiles
) -> None:
    with pytest.raises((ValueError, InvalidSignature)):
        _cert(tls.server_cert).verify_directly_issued_by(_cert(other_tls.ca_cert))


def test_the_ca_is_a_critical_ca_with_path_length_zero_that_only_signs_certificates(
    tls: TlsFiles,
) -> None:
    ca = _cert(tls.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert not usage.digital_signature
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)


def test_the_server_certificate_names_its_hosts_and_is_for_server_auth_only(
    tls: TlsFiles,
) -> None:
    server = _cert(tls.server_cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ip_address("127.0.0.1"),
        ip_address("::1"),
    ]
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public_key = server.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)


def test_generate_tls_uses_the_given_names_addresses_and_lifetime(tmp_path: Path) -> None:
    files = generate_tls(
        tmp_path / "new" / "dir",
        hostnames=["coordinator.example", "*.fl.example"],
        ip_addresses=["10.0.0.7"],
        days=2,
    )
    server = _cert(files.server_cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.example", "*.fl.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ip_address("10.0.0.7")]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 2 * 86400 <= lifetime.total_seconds() <= 2 * 86400 + 2 * 3600


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostnames": "localhost"},  # a str is a sequence of one-letter names
        {"hostnames": ["bad name"]},
        {"hostnames": ["héllo.example"]},
        {"hostnames": ["127.0.0.1"]},  # an IP as a DNS name would never match
        {"hostnames": [""]},
        {"ip_addresses": ["localhost"]},
        {"ip_addresses": "127.0.0.1"},
        {"hostnames": [], "ip_addresses": []},
        {"days": 0},
        {"days": True},
        {"days": 10**6},
    ],
)
def test_generate_tls_rejects_invalid_names_addresses_and_lifetimes(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        generate_tls(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- TLS: files on disk ----------------------------------------------------------------------


def test_the_server_key_is_0600_and_certificates_public_even_under_an_empty_umask(
    tmp_path: Path,
) -> None:
    with _umask(0):
        files = generate_tls(tmp_path)
    assert _mode(files.server_key) == 0o600
    assert _mode(files.ca_cert) == 0o644
    assert _mode(files.server_cert) == 0o644


def test_private_key_files_are_created_exclusively_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: dict[str, tuple[int, int]] = {}
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened[Path(path).name] = (flags, mode)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    generate_tls(tmp_path / "tls")
    _identity(3).save(tmp_path / "client-3.key")
    for name in ("server.key", "client-3.key"):
        flags, mode = opened[name]
        assert flags & os.O_CREAT and flags & os.O_EXCL
        assert mode == 0o600


def test_generate_tls_refuses_to_overwrite_and_leaves_existing_files_untouched(
    tmp_path: Path,
) -> None:
    (tmp_path / "server.key").write_bytes(b"precious")
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_tls(tmp_path)
    assert (tmp_path / "server.key").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


def test_generate_tls_refuses_to_run_twice_in_one_directory(tmp_path: Path) -> None:
    files = generate_tls(tmp_path)
    before = files.server_key.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_tls(tmp_path)
    assert files.server_key.read_bytes() == before


# --- TLS: real handshakes --------------------------------------------------------------------


def _recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _handshake(server: TlsFiles, ca_file: Path, server_hostname: str) -> bytes:
    """Run a TLS server and client over a socket pair; the server echoes 5 bytes upper-cased."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.server_cert, server.server_key)
    client_context = ssl.create_default_context(cafile=ca_file)
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    assert client_context.check_hostname
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)

    def serve() -> None:
        try:
            with server_context.wrap_socket(left, server_side=True) as tls:
                tls.sendall(_recv_exactly(tls, 5).upper())
        except OSError:  # ssl.SSLError is an OSError: the client refused us
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(right, server_hostname=server_hostname) as tls:
            tls.sendall(b"hello")
            return _recv_exactly(tls, 5)
    finally:
        right.close()
        thread.join(5)
        left.close()


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_a_tls_client_trusting_the_ca_completes_a_handshake_with_the_server(
    tls: TlsFiles, hostname: str
) -> None:
    assert _handshake(tls, tls.ca_cert, hostname) == b"HELLO"


def test_a_tls_client_trusting_another_ca_refuses_the_server(
    tls: TlsFiles, other_tls: TlsFiles
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, other_tls.ca_cert, "localhost")


def test_a_tls_client_refuses_the_server_under_a_name_the_certificate_lacks(
    tls: TlsFiles,
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, tls.ca_cert, "coordinator.example")


# --- TLS: loading ----------------------------------------------------------------------------


def test_load_tls_server_credentials_gives_the_key_and_chain_pem(tls: TlsFiles) -> None:
    key, chain = load_tls_server_credentials(tls)
    assert key == tls.server_key.read_bytes()
    assert chain == tls.server_cert.read_bytes()


def test_load_ca_gives_the_root_certificate_pem(tls: TlsFiles) -> None:
    assert load_ca(tls.ca_cert) == tls.ca_cert.read_bytes()


def _with(tls: TlsFiles, tmp_path: Path, **changes: bytes | None) -> TlsFiles:
    """A copy of ``tls`` in tmp_path with some files replaced (None: missing)."""
    paths: dict[str, Path] = {}
    for name in ("ca_cert", "server_cert", "server_key"):
        path = tmp_path / name
        content = changes.get(name, getattr(tls, name).read_bytes())
        if content is not None:
            path.write_bytes(content)
        paths[name] = path
    return TlsFiles(**paths)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server_key": None}, "cannot read server private key"),
        ({"server_cert": None}, "cannot read server certificate"),
        ({"server_key": b"junk"}, "is not a PEM private key"),
        ({"server_cert": b"junk"}, "is not a PEM certificate"),
        ({"server_cert": b""}, "is not a PEM certificate"),
        ({"server_key": "other"}, "does not belong to the certificate"),
        ({"server_key": "encrypted"}, "is encrypted"),
    ],
)
def test_load_tls_server_credentials_refuses_missing_junk_and_mismatched_files(
    tls: TlsFiles,
    other_tls: TlsFiles,
    tmp_path: Path,
    change: dict[str, bytes | str | None],
    message: str,
) -> None:
    (name, value), *_ = change.items()
    if value == "other":
        value = other_tls.server_key.read_bytes()
    elif value == "encrypted":
        key = serialization.load_pem_private_key(tls.server_key.read_bytes(), None)
        value = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"password"),
        )
    assert not isinstance(value, str)
    files = _with(tls, tmp_path, **{name: value})
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_tls_server_credentials(files)
    # Never quote the key: no line of its PEM body appears in the message.
    for line in tls.server_key.read_text().splitlines()[1:-1]:
        assert line not in str(caught.value)


def test_load_tls_server_credentials_refuses_an_expired_certificate(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=3))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles.in_directory(tmp_path)
    files.server_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_text(_pem(key))
    with pytest.raises(ConfigurationError, match="expired on"):
        load_tls_server_credentials(files)


def test_load_ca_refuses_a_server_certificate_junk_and_a_missing_file(
    tls: TlsFiles, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="not a CA"):
        load_ca(tls.server_cert)
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(ConfigurationError, match="not a PEM certificate"):
        load_ca(tmp_path / "junk.pem")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_ca(tmp_path / "missing.pem")


# --- client identities -----------------------------------------------------------------------


def test_an_identity_survives_save_and_load(tmp_path: Path) -> None:
    identity = ClientIdentity.generate(42)
    identity.save(tmp_path / "client.key")
    loaded = ClientIdentity.load(tmp_path / "client.key")
    assert loaded == identity
    assert loaded.client_id == 42
    assert loaded.public_key == identity.public_key
    challenge = new_challenge()
    assert sign_challenge(loaded, challenge) == sign_challenge(identity, challenge)


def test_an_identity_file_is_0600_and_starts_with_its_client_id(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    with _umask(0):
        _identity(7).save(path)
    assert _mode(path) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0] == "secagg-client-id: 7"
    assert lines[1] == "-----BEGIN PRIVATE KEY-----"
    assert lines[-1] == "-----END PRIVATE KEY-----"


def test_saving_an_identity_refuses_to_overwrite_a_file(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    _identity(1).save(path)
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        _identity(2).save(path)
    assert path.read_bytes() == before


def test_an_identity_repr_shows_its_id_and_no_private_key_bytes() -> None:
    identity = _identity(5)
    seed = DeterministicRandomness(SEED).fork("5").bytes(32)
    assert Ed25519SigningKey.from_private_bytes(seed).public == identity.public_key
    for text in (repr(identity), str(identity)):
        assert "client_id=5" in text
        assert seed.hex() not in text
        assert repr(seed) not in text
        assert seed.hex()[:8] not in text


def test_identities_are_fresh_by_default_and_reproducible_with_a_seeded_rng() -> None:
    assert ClientIdentity.generate(1).public_key != ClientIdentity.generate(1).public_key
    assert _identity(1).public_key == _identity(1).public_key
    assert _identity(1) == _identity(1)
    assert _identity(1) != _identity(2)


@pytest.mark.parametrize("client_id", [-1, MAX_ID + 1, 2**64, True, 1.0, "1"])
def test_an_identity_rejects_an_invalid_client_id(client_id: object) -> None:
    with pytest.raises(ConfigurationError):
        ClientIdentity.generate(client_id)  # type: ignore[arg-type]


def _pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, password: bytes = b"") -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_PEM = _pem(ED_KEY)
EC_PEM = _pem(ec.derive_private_key(12345, ec.SECP256R1()))
HEADER = "secagg-client-id: 3\n"

JUNK_IDENTITIES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "header only": lambda: HEADER.encode(),
    "no header": lambda: ED_PEM.encode(),
    "id with leading zero": lambda: ("secagg-client-id: 03\n" + ED_PEM).encode(),
    "negative id": lambda: ("secagg-client-id: -3\n" + ED_PEM).encode(),
    "id of 2**32 (the wire carries u32)": lambda: (
        f"secagg-client-id: {2**32}\n" + ED_PEM
    ).encode(),
    "id of 2**64": lambda: (f"secagg-client-id: {2**64}\n" + ED_PEM).encode(),
    "no space after colon": lambda: ("secagg-client-id:3\n" + ED_PEM).encode(),
    "not an Ed25519 key": lambda: (HEADER + EC_PEM).encode(),
    "encrypted key": lambda: (HEADER + _pem(ED_KEY, b"password")).encode(),
    "two keys": lambda: (HEADER + ED_PEM + ED_PEM).encode(),
    "trailing text": lambda: (HEADER + ED_PEM + "more\n").encode(),
    "corrupted base64": lambda: (HEADER + ED_PEM.replace("M", "!", 1)).encode(),
    "truncated key": lambda: (HEADER + ED_PEM[:60] + "\n-----END PRIVATE KEY-----\n").encode(),
    "empty PEM block": lambda: (
        HEADER + "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"
    ).encode(),
    "binary": lambda: b"\xff\xfe\x00" + ED_PEM.encode(),
}


@pytest.mark.parametrize("name", JUNK_IDENTITIES)
def test_loading_a_junk_identity_file_raises_configuration_error_without_quoting_it(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "client.key"
    path.write_bytes(JUNK_IDENTITIES[name]())
    with pytest.raises(ConfigurationError, match="not a secagg client identity file") as caught:
        ClientIdentity.load(path)
    for line in ED_PEM.splitlines()[1:-1]:
        assert line not in str(caught.value)


def test_loading_a_missing_identity_file_raises_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        ClientIdentity.load(tmp_path / "missing.key")
    with pytest.raises(ConfigurationError, match="cannot read"):
        ClientIdentity.load(tmp_path)


# --- signing the challenge -------------------------------------------------------------------


def test_the_signed_message_binds_label_challenge_client_id_and_public_key() -> None:
    public = bytes(range(32))
    assert auth_message(b"c" * 32, 9, public) == encode_fields(AUTH_LABEL, b"c" * 32, 9, public)
    assert AUTH_LABEL == "secagg/v1/client-auth"


def test_new_challenges_are_fresh_and_full_length() -> None:
    first, second = new_challenge(), new_challenge()
    assert len(first) == CHALLENGE_BYTES
    assert first != second


# --- the allow-list --------------------------------------------------------------------------


@pytest.fixture
def alice() -> ClientIdentity:
    return _identity(0, "alice")


@pytest.fixture
def bob() -> ClientIdentity:
    return _identity(1, "bob")


@pytest.fixture
def allow_list(alice: ClientIdentity, bob: ClientIdentity) -> AllowList:
    return AllowList({bob.client_id: bob.public_key, alice.client_id: alice.public_key})


def test_an_allow_list_survives_save_and_load(allow_list: AllowList, tmp_path: Path) -> None:
    path = tmp_path / "allowlist.toml"
    allow_list.save(path)
    assert AllowList.load(path) == allow_list
    assert list(AllowList.load(path).keys) == [0, 1]


def test_an_allow_list_file_is_a_clients_table_of_hex_keys(
    allow_list: AllowList, alice: ClientIdentity, bob: ClientIdentity, tmp_path: Path
) -> None:
    path = tmp_path / "allowlist.toml"
    allow_list.save(path)
    document = tomllib.loads(path.read_text())
    assert document == {"clients": {"0": alice.public_key.hex(), "1": bob.public_key.hex()}}


def test_saving_an_allow_list_replaces_the_previous_one_and_leaves_no_temporary_file(
    allow_list: AllowList, alice: ClientIdentity, tmp_path: Path
) -> None:
    path = tmp_path / "allowlist.toml"
    allow_list.save(path)
    smaller = AllowList({0: alice.public_key})
    smaller.save(path)
    assert AllowList.load(path) == smaller
    assert [p.name for p in tmp_path.iterdir()] == ["allowlist.toml"]


def test_an_allow_list_accepts_upper_case_hex(alice: ClientIdentity, tmp_path: Path) -> None:
    path = tmp_path / "allowlist.toml"
    path.write_text(f'[clients]\n"12" = "{alice.public_key.hex().upper()}"\n')
    assert AllowList.load(path).keys == {12: alice.public_key}


def test_an_allow_list_is_read_only_and_a_copy(alice: ClientIdentity) -> None:
    source = {0: alice.public_key}
    allow_list = AllowList(source)
    source[1] = bytes(32)
    assert dict(allow_list.keys) == {0: alice.public_key}
    with pytest.raises(TypeError):
        allow_list.keys[1] = bytes(32)  # type: ignore[index]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({0: b"k" * 32, 1: b"k" * 32}, "clients 0 and 1 have the same public key"),
        ({0: b"k" * 31}, "must be 32 bytes"),
        ({0: "k" * 32}, "must be 32 bytes"),
        ({-1: b"k" * 32}, ID_RANGE),
        ({MAX_ID + 1: b"k" * 32}, ID_RANGE),
        ({2**64: b"k" * 32}, ID_RANGE),
        ({True: b"k" * 32}, "must be an int"),
        ({"0": b"k" * 32}, "must be an int"),
    ],
)
def test_an_allow_list_rejects_bad_ids_bad_keys_and_shared_keys(
    keys: dict[object, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AllowList(keys)  # type: ignore[arg-type]


KEY = "ab" * 32
JUNK_ALLOW_LISTS: dict[str, tuple[bytes, str]] = {
    "not TOML": (b"[clients\n", "not valid TOML"),
    "not UTF-8": (b"\xff\xfe", "not UTF-8"),
    "empty": (b"", "no \\[clients\\] table"),
    "clients not a table": (b'clients = "x"\n', "no \\[clients\\] table"),
    "other top-level key": (b"[clients]\n[servers]\n", "unexpected top-level keys"),
    "bad hex": (f'[clients]\n"0" = "{"zz" * 32}"\n'.encode(), "hex digits"),
    "hex with spaces": (f'[clients]\n"0" = "{"ab " * 31}ab"\n'.encode(), "hex digits"),
    "short key": (f'[clients]\n"0" = "{"ab" * 31}"\n'.encode(), "64 hex digits.*got 62"),
    "long key": (f'[clients]\n"0" = "{"ab" * 33}"\n'.encode(), "64 hex digits.*got 66"),
    "key not a string": (b'[clients]\n"0" = 5\n', "hex digits"),
    "duplicate key": (
        f'[clients]\n"0" = "{KEY}"\n"1" = "{KEY}"\n'.encode(),
        "clients 0 and 1 have the same public key",
    ),
    "duplicate id": (f'[clients]\n"0" = "{KEY}"\n0 = "{KEY}"\n'.encode(), "not valid TOML"),
    "id with leading zero": (f'[clients]\n"00" = "{KEY}"\n'.encode(), "not a decimal"),
    "negative id": (f'[clients]\n"-1" = "{KEY}"\n'.encode(), "not a decimal"),
    "id with underscore": (f'[clients]\n"1_0" = "{KEY}"\n'.encode(), "not a decimal"),
    "id with a sign": (f'[clients]\n"+1" = "{KEY}"\n'.encode(), "not a decimal"),
    "id not a number": (f'[clients]\nalice = "{KEY}"\n'.encode(), "not a decimal"),
    "id of 2**32": (f'[clients]\n"{2**32}" = "{KEY}"\n'.encode(), ID_RANGE),
    "id of 2**64": (f'[clients]\n"{2**64}" = "{KEY}"\n'.encode(), ID_RANGE),
    "huge id": (f'[clients]\n"{"9" * 5000}" = "{KEY}"\n'.encode(), "not a decimal"),
}


@pytest.mark.parametrize("name", JUNK_ALLOW_LISTS)
def test_loading_a_junk_allow_list_raises_configuration_error_naming_the_problem(
    tmp_path: Path, name: str
) -> None:
    content, message = JUNK_ALLOW_LISTS[name]
    path = tmp_path / "allowlist.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=message) as caught:
        AllowList.load(path)
    assert str(path) in str(caught.value)


def test_loading_a_missing_allow_list_raises_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read allow-list"):
        AllowList.load(tmp_path / "missing.toml")


# --- authenticating a client -----------------------------------------------------------------


def test_verify_accepts_a_listed_client_signing_the_challenge(
    allow_list: AllowList, alice: ClientIdentity, bob: ClientIdentity
) -> None:
    challenge = new_challenge()
    for identity in (alice, bob):
        signature = sign_challenge(identity, challenge)
        allow_list.verify(identity.client_id, identity.public_key, challenge, signature)


# Each case: (client id claimed, public key sent, challenge signed, who signs as whom).
def _unknown_id(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    stranger = _identity(7, "stranger")
    return 7, stranger.public_key, sign_challenge(stranger, c)


def _wrong_key(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    impostor = ClientIdentity(a.client_id, b.signing_key)  # bob claims alice's id
    return a.client_id, impostor.public_key, sign_challenge(impostor, c)


def _other_challenge(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    return a.client_id, a.public_key, sign_challenge(a, new_challenge())


def _other_signer(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    impostor = ClientIdentity(a.client_id, b.signing_key)
    return a.client_id, a.public_key, sign_challenge(impostor, c)


def _replayed_for_other_id(
    a: ClientIdentity, b: ClientIdentity, c: bytes
) -> tuple[int, bytes, bytes]:
    return b.client_id, b.public_key, sign_challenge(a, c)


def _bare_challenge(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    return a.client_id, a.public_key, a.signing_key.sign(c)  # no label: not an auth answer


def _truncated(a: ClientIdentity, b: ClientIdentity, c: bytes) -> tuple[int, bytes, bytes]:
    return a.client_id, a.public_key, sign_challenge(a, c)[:-1]


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (_unknown_id, "client 7 is not on the allow-list"),
        (_wrong_key, "public key does not match client 0's"),
        (_other_challenge, "bad signature"),
        (_other_signer, "bad signature"),
        (_replayed_for_other_id, "bad signature"),
        (_bare_challenge, "bad signature"),
        (_truncated, "bad signature"),
    ],
)
def test_verify_rejects_with_authentication_error_that_quotes_no_key_or_signature(
    allow_list: AllowList,
    alice: ClientIdentity,
    bob: ClientIdentity,
    attempt: Callable[[ClientIdentity, ClientIdentity, bytes], tuple[int, bytes, bytes]],
    message: str,
) -> None:
    challenge = new_challenge()
    client_id, public_key, signature = attempt(alice, bob, challenge)
    with pytest.raises(AuthenticationError) as caught:
        allow_list.verify(client_id, public_key, challenge, signature)
    text = str(caught.value)
    assert text == message
    for secret in (alice.public_key, bob.public_key, public_key, signature, challenge):
        assert secret.hex()[:8] not in text
        assert repr(secret)[2:10] not in text


def test_verify_refuses_a_short_challenge_as_our_own_mistake(
    allow_list: AllowList, alice: ClientIdentity
) -> None:
    challenge = b"short"
    with pytest.raises(UsageError):
        allow_list.verify(0, alice.public_key, challenge, sign_challenge(alice, challenge))


# --- a whole deployment ----------------------------------------------------------------------


def test_create_deployment_writes_tls_identities_and_an_allow_list_that_fit(
    tmp_path: Path,
) -> None:
    deployment = create_deployment(tmp_path / "deploy", 3, first_id=10)
    assert deployment.tls == TlsFiles.in_directory(tmp_path / "deploy" / "tls")
    assert deployment.allow_list == tmp_path / "deploy" / "allowlist.toml"
    assert dict(deployment.identities) == {
        i: tmp_path / "deploy" / "clients" / f"client-{i}.key" for i in (10, 11, 12)
    }
    load_tls_server_credentials(deployment.tls)
    load_ca(deployment.tls.ca_cert)
    assert _mode(deployment.tls.server_key) == 0o600
    allow_list = AllowList.load(deployment.allow_list)
    assert list(allow_list.keys) == [10, 11, 12]
    challenge = new_challenge()
    for client_id, path in deployment.identities.items():
        assert _mode(path) == 0o600
        identity = ClientIdentity.load(path)
        assert identity.client_id == client_id
        assert allow_list.keys[client_id] == identity.public_key
        signature = sign_challenge(identity, challenge)
        allow_list.verify(client_id, identity.public_key, challenge, signature)


def test_create_deployment_refuses_an_existing_deployment_and_writes_nothing(
    tmp_path: Path,
) -> None:
    create_deployment(tmp_path, 1)
    (tmp_path / "tls" / "server.key").unlink()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigurationError, match="already exists"):
        create_deployment(tmp_path, 2)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("clients", "first_id"), [(0, 0), (-1, 0), (True, 0), (1, -1), (2, MAX_ID), (1, 2**64 - 1)]
)
def test_create_deployment_rejects_bad_counts_and_ids(
    tmp_path: Path, clients: int, first_id: int
) -> None:
    with pytest.raises(ConfigurationError):
        create_deployment(tmp_path, clients, first_id=first_id)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_id_the_wire_carries_is_accepted_everywhere_and_one_more_nowhere(
    tmp_path: Path,
) -> None:
    identity = ClientIdentity.generate(MAX_ID, rng=DeterministicRandomness(SEED))
    identity.save(tmp_path / "last.key")
    assert ClientIdentity.load(tmp_path / "last.key") == identity
    allow = AllowList({MAX_ID: identity.public_key})
    allow.save(tmp_path / "allowlist.toml")
    assert AllowList.load(tmp_path / "allowlist.toml").keys == {MAX_ID: identity.public_key}
    with pytest.raises(ConfigurationError, match=ID_RANGE):
        ClientIdentity(MAX_ID + 1, identity.signing_key)
    with pytest.raises(ConfigurationError, match=ID_RANGE):
        AllowList({MAX_ID + 1: identity.public_key})


def test_a_server_certificate_that_is_not_yet_valid_is_refused_when_loaded(
    tmp_path: Path,
) -> None:
    files = generate_tls(tmp_path)
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = _cert(files.server_cert)
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    future = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(tomorrow)
        .not_valid_after(tomorrow + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    files.server_cert.write_bytes(future.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigurationError, match="not valid before") as refused:
        load_tls_server_credentials(files)
    assert str(files.server_cert) in str(refused.value)

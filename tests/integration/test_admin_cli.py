"""`pacsguard user|ae|cert` on a data folder made by `pacsguard init`, as an operator runs them."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pacsguard.archive.config import load_settings
from pacsguard.archive.security.principal import Action, AuthMethod
from pacsguard.archive.tokens import ApiTokens

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
PASSWORD = "correct horse battery staple"


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACSGUARD, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder as `pacsguard init` leaves it (copied per test: init takes a while)."""
    data_dir = tmp_path_factory.mktemp("init") / "data"
    done = run("init", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return data_dir


@pytest.fixture
def data_dir(initialized: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    subprocess.run(["cp", "-a", str(initialized), str(target)], check=True)
    return target


def comment_lines(config: Path) -> list[str]:
    return [line for line in config.read_text().splitlines() if line.lstrip().startswith("#")]


def test_user_and_ae_round_trip_keeps_every_comment(data_dir: Path) -> None:
    config = data_dir / "pacsguard.toml"
    comments = comment_lines(config)
    assert len(comments) > 50  # the template explains every setting
    steps = [
        ("user add bob --role viewer --password-stdin", PASSWORD + "\n"),
        (
            "ae add BOBVIEW --auth user-password --username bob --permission echo,find "
            "--permission move --address 127.0.0.1",
            "",
        ),
        (
            f"ae add VIEWER_2 --auth mtls --cert-sha256 {'ab' * 32} --address 127.0.0.2 "
            "--port 11112 --move-destination --permission echo",
            "",
        ),
    ]
    for args, stdin in steps:
        done = run(*args.split(), "--data-dir", str(data_dir), stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert comment_lines(config) == comments
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = config.read_text()
    assert PASSWORD not in text
    settings = load_settings(config, env={})
    bob = settings.users["bob"]
    assert bob.roles == ("viewer",)
    assert bob.password_hash is not None and bob.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(bob.password_hash, PASSWORD)
    viewer = settings.ae("BOBVIEW")
    assert viewer is not None and viewer.auth is AuthMethod.USER_PASSWORD
    assert viewer.permissions == {Action.ECHO, Action.FIND, Action.MOVE}
    assert viewer.username == "bob" and viewer.address == "127.0.0.1"
    assert settings.move_address("VIEWER_2") == ("127.0.0.2", 11112)
    listed = run("ae", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0
    assert "BOBVIEW\tauth=user-password\tuser=bob" in listed.stdout
    assert "VIEWER_2" in listed.stdout and "move-destination" in listed.stdout
    users = run("user", "list", "--data-dir", str(data_dir))
    assert "bob\troles: viewer" in users.stdout
    assert "$argon2" not in users.stdout

    old_hash = bob.password_hash
    done = run("user", "passwd", "bob", "--generate", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    generated = done.stdout.split("never again:")[1].split()[0]
    new_hash = load_settings(config, env={}).users["bob"].password_hash
    assert new_hash is not None and new_hash != old_hash
    assert PasswordHasher().verify(new_hash, generated)
    assert generated not in config.read_text()

    # bob is BOBVIEW's user: removing him first is refused, naming the AE
    refused = run("user", "remove", "bob", "--data-dir", str(data_dir))
    assert refused.returncode == 2
    assert "BOBVIEW" in refused.stderr
    for args in ("ae remove BOBVIEW", "ae remove VIEWER_2", "user remove bob"):
        done = run(*args.split(), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr
    assert comment_lines(config) == comments
    settings = load_settings(config, env={})
    assert "bob" not in settings.users
    assert [ae.ae_title for ae in settings.aes] == ["ADMIN"]
    assert not [p.name for p in data_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("args", "stdin", "named"),
    [
        ("ae add CT1 --auth mtls --permission echo", "", "cert_sha256"),
        ("ae add CT1 --auth user-password --username nobody", "", "username"),
        ("ae add C\\T --auth address --address 127.0.0.1", "", "ae_title"),
        (
            "ae add FAR --auth address --address 192.0.2.7 --port 104 --move-destination",
            "",
            "move_tls",
        ),
        ("ae add ADMIN --auth address --address 127.0.0.1", "", "already"),
        ("ae add X --auth password", "", "--auth"),
        ("ae add X --auth address --permission delete", "", "--permission"),
        ("user add eve --role root --password-stdin", PASSWORD + "\n", "roles"),
        ("user add eve --password-stdin", "short\n", "12 characters"),
        ("user add admin --password-stdin", PASSWORD + "\n", "users.admin exists"),
        ("user passwd nobody --password-stdin", PASSWORD + "\n", "users.nobody"),
        ("user remove admin", "", "ADMIN"),
        ("ae remove NOBODY", "", "not registered"),
    ],
)
def test_a_broken_edit_is_refused_and_changes_nothing(
    data_dir: Path, args: str, stdin: str, named: str
) -> None:
    config = data_dir / "pacsguard.toml"
    before = config.read_bytes()
    done = run(*args.split(), "--data-dir", str(data_dir), stdin=stdin)
    assert done.returncode == 2, done.stdout
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert config.read_bytes() == before
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]


def _drive_prompt(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run `pacsguard` on a pseudo-terminal (its controlling tty, as getpass needs), answering
    each password prompt in turn; (exit code, what the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.execv(PACSGUARD, [PACSGUARD, *args])
    shown = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown[answered:].endswith(b": "):  # a new prompt waits
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered = len(shown)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_the_password_prompt_asks_twice_and_never_echoes(data_dir: Path) -> None:
    config = data_dir / "pacsguard.toml"
    before = config.read_bytes()
    code, shown = _drive_prompt(
        ["user", "add", "carol", "--data-dir", str(data_dir)], [PASSWORD, PASSWORD + "x"]
    )
    assert code == 2 and "passwords differ" in shown
    assert config.read_bytes() == before
    code, shown = _drive_prompt(
        ["user", "add", "carol", "--role", "modality", "--data-dir", str(data_dir)],
        [PASSWORD, PASSWORD],
    )
    assert code == 0, shown
    assert "New password:" in shown and "Repeat it:" in shown
    assert PASSWORD not in shown  # not echoed
    digest = load_settings(config, env={}).users["carol"].password_hash
    assert digest is not None and PasswordHasher().verify(digest, PASSWORD)


def test_cert_issue_signs_with_the_archive_ca_and_prints_the_fingerprint(data_dir: Path) -> None:
    ca = x509.load_pem_x509_certificate((data_dir / "tls" / "ca.crt").read_bytes())
    done = run("cert", "issue", "--client", "CT_SCANNER_1", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((data_dir / "peers" / "CT_SCANNER_1.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert f"sha256: {cert.fingerprint(hashes.SHA256()).hex()}" in done.stdout
    key = data_dir / "peers" / "CT_SCANNER_1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in done.stdout

    done = run(
        "cert", "issue", "--server", "VIEWER_1", "--address", "192.0.2.30",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((data_dir / "peers" / "VIEWER_1.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.30"]

    fingerprint = done.stdout.split("sha256: ")[1].split()[0]
    added = run(
        "ae", "add", "VIEWER_1", "--auth", "mtls", "--cert-sha256", fingerprint,
        "--permission", "echo", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    registered = load_settings(data_dir / "pacsguard.toml", env={}).ae("VIEWER_1")
    assert registered is not None and registered.cert_sha256 == fingerprint

    again = run("cert", "issue", "--client", "CT_SCANNER_1", "--data-dir", str(data_dir))
    assert again.returncode == 2 and "exists" in again.stderr
    both = run("cert", "issue", "--client", "A", "--server", "B", "--data-dir", str(data_dir))
    assert both.returncode == 2 and "exactly one" in both.stderr
    nowhere = run("cert", "issue", "--server", "B", "--data-dir", str(data_dir))
    assert nowhere.returncode == 2 and "--address" in nowhere.stderr


def test_token_issue_list_revoke(data_dir: Path) -> None:
    issued = run("token", "issue", "--user", "admin", "--days", "7", "--data-dir", str(data_dir))
    assert issued.returncode == 0, issued.stderr
    assert "Authorization: Bearer <token>" in issued.stdout
    token = issued.stdout.split("never again:")[1].split()[0]
    token_id = token.split("_")[1]
    stored = (data_dir / "api-tokens.json").read_text()
    assert token not in stored
    listed = run("token", "list", "--data-dir", str(data_dir))
    assert f"{token_id}\tadmin\texpires " in listed.stdout and "\tactive" in listed.stdout
    assert token not in listed.stdout
    assert run("token", "revoke", token_id, "--data-dir", str(data_dir)).returncode == 0
    assert "\trevoked" in run("token", "list", "--data-dir", str(data_dir)).stdout
    unknown = run("token", "issue", "--user", "nobody", "--data-dir", str(data_dir))
    assert unknown.returncode == 2 and "users.nobody" in unknown.stderr


def test_concurrent_edits_lose_nothing(data_dir: Path) -> None:
    """Operators (or scripts) editing at once: each edit is made under the folder lock."""

    def add(i: int) -> subprocess.Popen[bytes]:
        args = f"ae add PEER{i} --auth address --address 127.0.0.{i + 2} --permission echo"
        return subprocess.Popen(
            [PACSGUARD, *args.split(), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    procs = [add(i) for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    settings = load_settings(data_dir / "pacsguard.toml", env={})
    assert sorted(ae.ae_title for ae in settings.aes) == [
        "ADMIN", "PEER0", "PEER1", "PEER2", "PEER3",
    ]  # fmt: skip


def test_tokens_go_where_the_archive_of_the_config_reads_them(
    data_dir: Path, tmp_path: Path
) -> None:
    # --config may name a file whose storage.data_dir is not --data-dir: `serve --config` reads
    # api-tokens.json from storage.data_dir, so that is where `token issue` must write it.
    config = tmp_path / "etc" / "pacsguard.toml"
    config.parent.mkdir()
    text = (data_dir / "pacsguard.toml").read_text()
    config.write_text(text.replace('data_dir = "."', f'data_dir = "{data_dir}"'))
    elsewhere = ("--config", str(config), "--data-dir", str(tmp_path / "unused"))
    issued = run("token", "issue", "--user", "admin", *elsewhere)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.split("never again:")[1].split()[0]
    api_tokens = ApiTokens.from_settings(load_settings(config, env={}))
    assert api_tokens.verify(token) == "admin"
    assert token.split("_")[1] in run("token", "list", *elsewhere).stdout
    missing = run("token", "list", "--data-dir", str(tmp_path / "typo"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_user_added_without_a_role_is_told_it_may_do_nothing(data_dir: Path) -> None:
    bare = run(
        "user", "add", "dan", "--password-stdin", "--data-dir", str(data_dir), stdin=PASSWORD
    )
    assert bare.returncode == 0, bare.stderr
    assert "no role, so it may do nothing" in bare.stderr and "[users.dan]" in bare.stderr
    with_role = run(
        "user", "add", "erin", "--role", "viewer", "--password-stdin", "--data-dir",
        str(data_dir), stdin=PASSWORD,
    )  # fmt: skip
    assert with_role.returncode == 0 and "no role" not in with_role.stderr


def test_ae_add_says_what_a_new_user_would_trip_over(data_dir: Path) -> None:
    where = ("--data-dir", str(data_dir))
    no_user = run("ae", "add", "NOUSER", "--auth", "user-password", *where)
    assert no_user.returncode == 2 and "--username NAME" in no_user.stderr
    too_long = run("ae", "add", "A" * 17, "--auth", "mtls", "--cert-sha256", "0" * 64, *where)
    assert too_long.returncode == 2
    assert f"{data_dir / 'pacsguard.toml'}" in too_long.stderr and ".tmp" not in too_long.stderr
    idle = run("ae", "add", "IDLE", "--auth", "user-password", "--username", "admin", *where)
    assert idle.returncode == 0 and "has no permission, so it may do nothing" in idle.stderr
    by_address = run(
        "ae", "add", "BYADDR", "--auth", "address", "--address", "127.0.0.1", "--permission",
        "echo", *where,
    )  # fmt: skip
    assert by_address.returncode == 0 and "allow_address_auth = false" in by_address.stderr
    assert "no permission" not in by_address.stderr

"""The daemon's settings: flags over ``RECONCILER_*`` environment variables over a config file.

Every command that touches a backend reads them the same way. Credentials
(``RECONCILER_GIT_TOKEN``, key files) come from the environment or files,
never from flags, so they stay out of process lists and shell history.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from reconciler.adapters.clocks import parse_clock_warp
from reconciler.app.notifying import NotifyTargetSettings

ENV_PREFIX = "RECONCILER_"


class SettingsError(Exception):
    """Settings that do not validate; the message names the setting and its origin."""


class ComputeSettings(BaseModel):
    """Where a step's ``compute`` puts its pod on Kubernetes."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class SignerSettings(BaseModel):
    """A person who may sign commits to the manifests repository, and their roles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    email: str = Field(min_length=3, description="the principal of the key in git's terms")
    key: str = Field(pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) \S+")
    roles: list[Literal["tenant-admin", "data-developer"]] = Field(default_factory=list)


class UserSettings(BaseModel):
    """A person of the HTTP API: a bearer token (from a file, a mounted Secret) and groups."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    token: str | None = Field(default=None, repr=False)
    token_file: Path | None = None
    groups: list[str] = Field(default_factory=list)

    def read_token(self) -> str | None:
        if self.token:
            return self.token
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None


def _check_clock_warp(value: str | None) -> str | None:
    if value is not None:
        parse_clock_warp(value)  # ValueError names the expected form
    return value


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    repo: str | None = Field(default=None, description="git URL, local repository or directory")
    branch: str = "main"
    path: str = Field(default="", description="directory of the manifests inside the repository")
    state_dir: Path = Path(".reconciler-state")
    backend: Literal["local", "kubernetes"] = "local"
    kubeconfig: Path | None = Field(default=None, description="default: in-cluster, else ~/.kube")
    kube_context: str | None = None
    kube_namespace: str = Field(
        default="workflow-reconciler",
        description="the daemon's namespace: its Lease and state ConfigMap",
    )
    kube_run_history: int = Field(
        default=100, ge=1, description="finished WorkflowRuns kept per Workflow (Kubernetes)"
    )
    kube_workspaces: list[str] = Field(
        default_factory=list,
        description="namespaces workflows may live in; empty: any but kube-* and the daemon's",
    )
    kube_stuck_grace: float = Field(
        default=60.0,
        ge=0,
        description="seconds a step's pod may wait on a missing Secret or image before failing",
    )
    kube_job_ttl: int | None = Field(
        default=86400, ge=0, description="seconds a finished step's Job (and its log) is kept"
    )
    leader_election: bool = False
    lease_name: str = "workflow-reconciler-leader"
    lease_duration: float = Field(default=15.0, gt=0)
    renew_deadline: float = Field(default=10.0, gt=0)
    retry_period: float = Field(default=2.0, gt=0)
    identity: str | None = Field(default=None, description="default: $POD_NAME, else host-pid")
    compute: dict[str, ComputeSettings] = Field(
        default_factory=lambda: {"runnable-default": ComputeSettings()},
        description="compute name -> nodeSelector and tolerations (Kubernetes)",
    )
    http_address: str | None = Field(
        default=None,
        description="host:port of /healthz, /readyz, /metrics and /hooks/*; 'off' for none; "
        "default 127.0.0.1:8080, or 0.0.0.0:8080 in a pod",
    )
    poke_debounce: float = Field(
        default=0.5, ge=0, le=60, description="seconds a webhook or saved file waits for more"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: text on a terminal, JSON otherwise"
    )
    webhook_github_secret: str | None = Field(default=None, repr=False)
    webhook_github_secret_file: Path | None = None
    webhook_gitlab_secret: str | None = Field(default=None, repr=False)
    webhook_gitlab_secret_file: Path | None = None
    webhook_token: str | None = Field(default=None, repr=False)
    webhook_token_file: Path | None = None
    webhook_max_body: int = Field(default=1 << 20, ge=1024, description="bytes")
    verify_commits: bool = Field(
        default=False, description="apply only commits signed by `signers` with a creating role"
    )
    signers: list[SignerSettings] = Field(default_factory=list)
    users: list[UserSettings] = Field(
        default_factory=list, description="people of the HTTP API, by bearer token"
    )
    notify_targets: dict[str, NotifyTargetSettings] = Field(
        default_factory=dict,
        description="name -> {url | url_file, format: slack|generic}; rules in .reconciler.yaml",
    )
    owner: str = Field(
        default="default",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="this reconciler's inventory name; distinct per reconciler on a backend",
    )
    interval: float = Field(default=60.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, lt=1)
    watch: bool = False
    allow_prune: bool = False
    max_deletion_share: float = Field(default=0.5, gt=0, le=1)
    max_deletions: int | None = Field(default=None, ge=0)
    git_token: str | None = Field(default=None, repr=False)
    git_token_file: Path | None = None
    git_username: str | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    insecure_skip_host_key_check: bool = False
    git_timeout: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    catch_up: Literal["none", "latest", "all"] = "latest"
    starting_deadline: float = Field(default=3600.0, gt=0, description="seconds")
    max_parallel: int = Field(default=8, ge=1, le=1024, description="steps at once")
    shutdown_grace: float = Field(default=30.0, ge=0, description="seconds steps get at stop")
    status_enabled: bool | None = Field(
        default=None, description="status branch on/off; default: on for git sources"
    )
    status_repo: str | None = Field(default=None, description="default: the source repo")
    status_branch: str = "status"
    status_flush_interval: float = Field(default=30.0, gt=0)
    status_author_name: str = "Workflow Reconciler"
    status_author_email: str = "reconciler@localhost"
    status_signing_key: Path | None = None
    status_keep_succeeded: int = Field(default=20, ge=1)
    status_keep_failed: int = Field(default=50, ge=1)
    status_squash_depth: int | None = Field(default=None, ge=2)
    clock_warp: Annotated[str | None, AfterValidator(_check_clock_warp)] = Field(
        default=None,
        description="for simulations and tests only: RATEx@START[/ANCHOR] runs the daemon's "
        "wall clock RATE times as fast, reading START at the real time ANCHOR (default START)",
    )

    def secret(self, name: str) -> str | None:
        """A webhook secret from its setting or its file (a mounted Secret); empty is unset."""
        value: str | None = getattr(self, name)
        path: Path | None = getattr(self, f"{name}_file")
        if not value and path is not None:
            try:
                value = path.read_text().strip()
            except FileNotFoundError:
                return None  # an optional Secret not created: that endpoint stays off
            except OSError as exc:
                raise SettingsError(f"setting {name}_file: cannot read {path}: {exc}") from exc
        return value or None

    def serving_address(self, environ: Mapping[str, str]) -> str | None:
        """Where the HTTP server listens; None when switched off."""
        if self.http_address in ("off", ""):
            return None
        if self.http_address is not None:
            return self.http_address
        in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST"))
        return "0.0.0.0:8080" if in_pod else "127.0.0.1:8080"

    def token(self) -> str | None:
        if self.git_token:
            return self.git_token
        if self.git_token_file is not None:
            try:
                return self.git_token_file.read_text().strip() or None
            except FileNotFoundError:
                # The Secret holding it is optional (public repositories need none).
                return None
        return None


def load_settings(
    flags: Mapping[str, Any], *, environ: Mapping[str, str], config_file: Path | None = None
) -> Settings:
    """Merge the three origins (flags win) and validate."""
    origin: dict[str, str] = {}
    values: dict[str, Any] = {}
    file = config_file or (
        Path(environ[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in environ else None
    )
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {file} must be a mapping of settings")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            values[name] = value
            origin[name] = f"config file {file}"
    for name in Settings.model_fields:
        env_name = f"{ENV_PREFIX}{name.upper()}"
        if env_name in environ:
            values[name] = environ[env_name]
            origin[name] = f"environment variable {env_name}"
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            origin[name] = f"--{name.replace('_', '-')}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "?"
            where = origin.get(name, "default")
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown setting; known: {', '.join(Settings.model_fields)}"
            lines.append(f"setting {name!r} ({where}): {message}")
        raise SettingsError("\n".join(lines)) from exc

"""The launch recipes under ``docker/`` name only real flags, env vars, files and commands.

Checked here without building or launching anything (the image itself is built and run by
``make image`` and ``docker/smoke-image.sh``, see docs/docker.md): the shell scripts parse
(``bash -n``); every flag that a ``clipserve start``, ``python -m trainer`` or ``torchrun`` in the
Slurm script, the Kubernetes manifests, compose and the Dockerfile passes exists in that program's
real ``--help`` output and gets as many values as the help says; the ``CLIPSERVE_*`` variables they
set are listed in ``clipserve start --help``; the commands with literal values go through the real
parsers and config validation (``clipserve start``'s ServiceConfig, the trainer's ``parse_args``);
the inline ``python -c`` programs compile; the Dockerfile's COPY sources and ENTRYPOINT exist; and
the health check's start period is one value everywhere. Not checked here: that Slurm, Kubernetes
or Docker run them (no scheduler, cluster or Docker engine on this machine).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SBATCH = DOCKER / "slurm" / "clipserve.sbatch"
K8S_PER_NODE = DOCKER / "k8s" / "train-per-node.yaml"
K8S_DECODE_HOSTS = DOCKER / "k8s" / "decode-hosts.yaml"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SCRIPTS = [SBATCH, DOCKER / "build-image.sh", DOCKER / "smoke-image.sh"]
MANIFESTS = [K8S_PER_NODE, K8S_DECODE_HOSTS]

SERVICE = "clipserve start"
TRAINER = "python -m trainer"
TORCHRUN = "torchrun"
HELP_COMMANDS = {
    SERVICE: [sys.executable, "-m", "clipserve.cli", "start", "--help"],
    TRAINER: [sys.executable, "-m", "trainer", "--help"],
    TORCHRUN: [sys.executable, "-m", "torch.distributed.run", "--help"],
}
SECRET_SAMPLE = "a-sample-token-0123"
"""Stands for a Secret's value (>= 8 characters, as --token requires)."""


# --- what --help says ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One flag of a --help listing: how many values it takes and, when listed, which."""

    min_values: int
    max_values: float
    choices: tuple[str, ...] | None


def _option(metavar: str) -> Option:
    words = metavar.split()
    if not words:
        return Option(0, 0, None)
    if len(words) == 1 and re.fullmatch(r"\{[^}]*\}", words[0]):
        return Option(1, 1, tuple(words[0][1:-1].split(",")))
    if len(words) == 1 and words[0].startswith("["):
        return Option(0, 1, None)  # --flag [VALUE]
    if words[-1].endswith("...]"):
        return Option(1, math.inf, None)  # --flag VALUE [VALUE ...]
    return Option(len(words), len(words), None)


def parse_help(text: str) -> dict[str, Option]:
    """Every option of an argparse help text (all aliases), from its invocation column."""
    options: dict[str, Option] = {}
    for line in text.splitlines():
        match = re.match(r"^  (-\S.*?)(?: {2,}|$)", line)
        if match is None:
            continue
        for alternative in match.group(1).split(", "):
            name, _, metavar = alternative.partition(" ")
            options[name] = _option(metavar)
    return options


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """The real --help text of each program (wide, so no line is wrapped)."""
    env = dict(os.environ, COLUMNS="2000")
    texts = {}
    for program, command in HELP_COMMANDS.items():
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr[-2000:]}"
        texts[program] = done.stdout
    return texts


@pytest.fixture(scope="module")
def options(helps: dict[str, str]) -> dict[str, dict[str, Option]]:
    parsed = {program: parse_help(text) for program, text in helps.items()}
    for program, found in parsed.items():
        assert "--help" in found or program == TRAINER, f"no options parsed from {program} --help"
    assert {"--root", "--shard-id", "--num-shards", "--host", "--token"} <= set(parsed[SERVICE])
    assert {"--server", "--objective", "--checkpoint-dir"} <= set(parsed[TRAINER])
    assert {"--nnodes", "--nproc-per-node", "--node-rank", "--master-addr"} <= set(parsed[TORCHRUN])
    return parsed


@pytest.fixture(scope="module")
def service_env_vars(helps: dict[str, str]) -> set[str]:
    names = set(re.findall(r"\benv (CLIPSERVE_[A-Z0-9_]+)", helps[SERVICE]))
    assert {"CLIPSERVE_ROOT", "CLIPSERVE_SHARD_ID", "CLIPSERVE_TOKEN"} <= names
    return names


def test_parse_help_reads_arity_and_choices() -> None:
    text = ("options:\n  -h, --help            show\n  --root ROOT           dir\n"
            "  --server SERVER [SERVER ...]\n                        urls\n"
            "  --crop-area FRACTION0 FRACTION1\n  --resume [RESUME]     go on\n"
            "  --log-level {debug,info}  verbosity\n  --no-python, --no_python\n"
            "                        --root in a description is not an option\n")
    found = parse_help(text)
    assert set(found) == {"-h", "--help", "--root", "--server", "--crop-area", "--resume", "--log-level",
                          "--no-python", "--no_python"}
    assert found["--help"] == Option(0, 0, None) and found["--root"] == Option(1, 1, None)
    assert found["--server"] == Option(1, math.inf, None) and found["--crop-area"] == Option(2, 2, None)
    assert found["--resume"] == Option(0, 1, None) and found["--log-level"].choices == ("debug", "info")


# --- which programs the recipes run, with which arguments --------------------------------------


def shell_words(script: str) -> list[list[str]]:
    """The simple commands of a shell script as word lists: continuations joined, comments dropped
    (a ``#`` at a line's start or after a blank, outside quotes alike), split at ; & | && || ( )
    and newlines. The script of a ``bash -c SCRIPT`` is split the same way and its commands added."""
    script = re.sub(r"(?m)(?:^|(?<=[ \t]))#[^\n]*", "", script.replace("\\\n", " "))
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|()\n")
    lexer.whitespace = " \t"
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word and set(word) <= set(";&|()\n"):
            commands.append([])
        else:
            commands[-1].append(word)
    nested = [shell_words(command[i + 2]) for command in commands for i in range(len(command) - 2)
              if Path(command[i]).name in {"bash", "sh"} and command[i + 1] == "-c"]
    return [command for command in commands if command] + [c for found in nested for c in found]


def invocations(words: list[str]) -> list[tuple[str, list[str]]]:
    """(program, arguments) of each clipserve start / torchrun / python -m trainer in ``words``."""
    found = []
    for i, word in enumerate(words):
        if Path(word).name == "clipserve" and words[i + 1:i + 2] == ["start"]:
            found.append((SERVICE, words[i + 2:]))
        elif Path(word).name == "torchrun":
            rest = words[i + 1:]
            found.append((TORCHRUN, rest[:rest.index("-m")] if "-m" in rest else rest))
        elif word == "-m" and words[i + 1:i + 2] == ["trainer"]:
            found.append((TRAINER, words[i + 2:]))
    return found


def python_programs(words: list[str]) -> list[str]:
    """The program text of each ``python -c PROGRAM`` / ``python3 -c PROGRAM`` in ``words``."""
    return [words[i + 2] for i, word in enumerate(words[:-2])
            if Path(word).name in {"python", "python3"} and words[i + 1] == "-c"]


def check_arguments(program: str, arguments: list[str], known: dict[str, Option]) -> list[str]:
    """Problems of one invocation: unknown flags, wrong value counts, values outside the choices,
    stray positional words. Values holding shell or Kubernetes variables are not compared."""
    problems = []
    i = 0
    while i < len(arguments):
        word = arguments[i]
        if not word.startswith("-"):
            problems.append(f"{program}: stray argument {word!r} (not a value of any flag)")
            i += 1
            continue
        name, has_value, inline = word.partition("=")
        option = known.get(name)
        if option is None:
            problems.append(f"{program}: {name} is not in `{program} --help`")
            i += 1
            continue
        if has_value:
            values = [inline]
        else:
            values = []
            while (len(values) < option.max_values and i + 1 + len(values) < len(arguments)
                   and not arguments[i + 1 + len(values)].startswith("-")):
                values.append(arguments[i + 1 + len(values)])
        if not option.min_values <= len(values) <= option.max_values:
            problems.append(f"{program}: {name} takes {option.min_values}..{option.max_values} values, got {values}")
        for value in values:
            if option.choices and "$" not in value and value not in option.choices:
                problems.append(f"{program}: {name} {value!r} is not one of {option.choices}")
        i += 1 + (0 if has_value else len(values))
    return problems


def test_shell_words_split_commands_and_nested_scripts() -> None:
    script = ("#!/bin/bash\n# clipserve start --not-a-flag\nx=1; srun bash -c 'exec clipserve start \\\n"
              "  --root \"$0\"' /data &\nsrun torchrun --nnodes 2 -m trainer --server u1 u2 && echo done\n")
    commands = shell_words(script)
    assert ["x=1"] in commands and ["echo", "done"] in commands
    found = [item for command in commands for item in invocations(command)]
    assert (SERVICE, ["--root", "$0"]) in found
    assert (TORCHRUN, ["--nnodes", "2"]) in found
    assert (TRAINER, ["--server", "u1", "u2"]) in found
    assert not any("--not-a-flag" in arguments for _, arguments in found)


def test_check_arguments_catches_unknown_flags_counts_and_choices() -> None:
    known = {"--root": Option(1, 1, None), "--server": Option(1, math.inf, None),
             "--log-level": Option(1, 1, ("debug", "info")), "--eval-mode": Option(0, 0, None)}
    assert check_arguments("p", ["--root", "/x", "--server", "a", "b", "--eval-mode"], known) == []
    assert check_arguments("p", ["--root=/x", "--log-level", "$LEVEL"], known) == []
    problems = check_arguments("p", ["--roots", "/x", "--root", "--log-level", "loud", "--eval-mode", "yes"], known)
    assert len(problems) == 5, problems  # unknown, its stray value, no value, bad choice, stray value


# --- the recipes -------------------------------------------------------------------------------


@dataclass
class Launch:
    """One container or script step: its words, and the CLIPSERVE_* variables it sets."""

    where: str
    words: list[str]
    env: dict[str, str]


def _image_entrypoint() -> list[str]:
    return json.loads(_dockerfile_instruction("ENTRYPOINT"))


def _manifest_launches(path: Path) -> list[Launch]:
    launches = []
    for doc in yaml.safe_load_all(path.read_text()):
        spec = doc["spec"]
        pod = spec.get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            env = {}
            for item in container.get("env", []):
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif "secretKeyRef" in item["valueFrom"]:
                    env[item["name"]] = SECRET_SAMPLE
                else:  # the pod's index / ordinal
                    env[item["name"]] = "0"
            words = list(container.get("command", _image_entrypoint())) + [str(a) for a in container.get("args", [])]
            launches.append(Launch(f"{path.name}: {doc['metadata']['name']}/{container['name']}", words, env))
    return launches


def _compose_launches() -> list[Launch]:
    compose = yaml.safe_load(COMPOSE.read_text())
    launches = []
    for name, service in compose["services"].items():
        words = list(service.get("entrypoint", _image_entrypoint())) + list(service.get("command", []))
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        launches.append(Launch(f"compose.yaml: {name}", words, env))
    return launches


def _script_launches() -> list[Launch]:
    return [Launch(f"{path.name}: {' '.join(words)[:60]}", words, {})
            for path in SCRIPTS for words in shell_words(path.read_text())]


def _dockerfile_instruction(keyword: str) -> str:
    """The (last) instruction's argument text, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.findall(rf"^{keyword}\s+(.*)$", text, flags=re.MULTILINE)
    assert found, f"no {keyword} in {DOCKERFILE}"
    return found[-1]


def _dockerfile_launch() -> Launch:
    return Launch("Dockerfile: ENTRYPOINT + CMD", _image_entrypoint() + json.loads(_dockerfile_instruction("CMD")), {})


def all_launches() -> list[Launch]:
    return ([launch for path in MANIFESTS for launch in _manifest_launches(path)] + _compose_launches()
            + _script_launches() + [_dockerfile_launch()])


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(path: Path) -> None:
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_flag_exists_in_help(options: dict[str, dict[str, Option]]) -> None:
    problems, seen = [], set()
    for launch in all_launches():
        for program, arguments in invocations(launch.words):
            seen.add((launch.where.split(":")[0], program))
            problems += [f"{launch.where}: {p}" for p in check_arguments(program, arguments, options[program])]
    assert not problems, "\n".join(problems)
    # every recipe was read: each names the programs it is meant to run
    for expected in [("clipserve.sbatch", SERVICE), ("clipserve.sbatch", TORCHRUN), ("clipserve.sbatch", TRAINER),
                     ("train-per-node.yaml", SERVICE), ("train-per-node.yaml", TORCHRUN),
                     ("train-per-node.yaml", TRAINER), ("decode-hosts.yaml", SERVICE),
                     ("decode-hosts.yaml", TRAINER), ("compose.yaml", SERVICE), ("compose.yaml", TRAINER),
                     ("Dockerfile", SERVICE), ("smoke-image.sh", SERVICE), ("smoke-image.sh", TRAINER)]:
        assert expected in seen, f"{expected[0]} runs no {expected[1]}"


def test_env_vars_are_real(service_env_vars: set[str]) -> None:
    text_sources = {p.name: p.read_text() for p in [*MANIFESTS, COMPOSE, DOCKERFILE, *SCRIPTS]}
    unknown = {f"{name}: {var}" for name, text in text_sources.items()
               for var in re.findall(r"\bCLIPSERVE_[A-Z0-9_]+", text) if var not in service_env_vars}
    assert not unknown, f"not in `clipserve start --help`: {sorted(unknown)}"


def test_literal_commands_pass_the_real_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands with literal values (manifests, compose, Dockerfile) go through the parsers and
    validation that ``clipserve start`` and ``python -m trainer`` run before doing anything."""
    from clipserve.cli import build_parser
    from clipserve.config_cli import model_overrides
    from clipserve.settings import ServiceConfig, load_service_config
    from trainer.config import parse_args

    checked = set()
    launches = [*(launch for path in MANIFESTS for launch in _manifest_launches(path)), *_compose_launches(),
                _dockerfile_launch()]
    for launch in launches:
        for name in [n for n in os.environ if n.startswith("CLIPSERVE_")]:
            monkeypatch.delenv(name)
        for name, value in launch.env.items():
            monkeypatch.setenv(name, value)
        for program, arguments in invocations(launch.words):
            if program == SERVICE:
                args = build_parser().parse_args(["start", *arguments])
                config = load_service_config(model_overrides(args, ServiceConfig.model_fields), None)
                assert config.host in ("127.0.0.1", "0.0.0.0"), launch.where
                checked.add(SERVICE)
            elif program == TRAINER:
                config = parse_args(arguments)
                assert config.server, launch.where
                checked.add(TRAINER)
    assert checked == {SERVICE, TRAINER}


def test_inline_python_compiles() -> None:
    programs = [(launch.where, program) for launch in all_launches() for program in python_programs(launch.words)]
    programs += [("Dockerfile HEALTHCHECK", shlex.split(_dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1])[2])]
    compose = yaml.safe_load(COMPOSE.read_text())
    programs += [("compose healthcheck", compose["services"]["clipserve"]["healthcheck"]["test"][3])]
    assert len(programs) >= 4
    for where, program in programs:
        compile(program, where, "exec")


def test_dockerfile_copy_sources_entrypoint_and_build_args() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies = re.findall(r"^COPY\s+(.*)$", text, flags=re.MULTILINE)
    assert copies
    for line in copies:
        words = [w for w in shlex.split(line) if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile: COPY source {source} does not exist"
    entrypoint = _image_entrypoint()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts, f"ENTRYPOINT {entrypoint[0]} is not a [project.scripts] command"
    declared = set(re.findall(r"^ARG\s+(\w+)", text, flags=re.MULTILINE))
    passed = set(re.findall(r"--build-arg \"?(\w+)=", (DOCKER / "build-image.sh").read_text()))
    assert passed and passed <= declared, f"build-image.sh passes undeclared build args {passed - declared}"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, flags=re.MULTILINE)
    # the defaults stay the CUDA base and wheels, and the torch pins are the ones `make venv` installs
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:", text, flags=re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu", text, flags=re.MULTILINE)
    makefile = (ROOT / "Makefile").read_text()
    for package, arg in [("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")]:
        pinned = re.search(rf'"{package}==([\d.]+)"', makefile)
        assert pinned and re.search(rf"^ARG {arg}={re.escape(pinned.group(1))}$", text, flags=re.MULTILINE), arg
    assert (ROOT / yaml.safe_load(COMPOSE.read_text())["services"]["clipserve"]["build"]["dockerfile"]).is_file()


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, f"expected seconds like 1800s, got {value!r}"
    return int(match.group(1))


def test_one_health_check_start_period() -> None:
    """The time a first start may take to answer /healthz (it indexes the split) is one value in
    the Dockerfile, compose, the Kubernetes startupProbes, the Slurm script and docs/docker.md."""
    periods = {"Dockerfile": _seconds(re.search(r"--start-period=(\S+)", _dockerfile_instruction("HEALTHCHECK")).group(1))}
    periods["compose.yaml"] = _seconds(yaml.safe_load(COMPOSE.read_text())["services"]["clipserve"]["healthcheck"]["start_period"])
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            pod = doc["spec"].get("template", {}).get("spec", {})
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                probe = container.get("startupProbe")
                if probe:
                    periods[f"{path.name}: {container['name']}"] = probe["periodSeconds"] * probe["failureThreshold"]
    periods["clipserve.sbatch"] = int(re.search(r"HEALTH_TIMEOUT_SECONDS:-(\d+)", SBATCH.read_text()).group(1))
    docs = (ROOT / "docs" / "docker.md").read_text()
    for found in re.findall(r"start[\s_-]+period(?:\s+of|:|=)\s*(\d+)\s*s\b", docs):
        periods.setdefault("docs/docker.md", int(found))
        assert int(found) == periods["docs/docker.md"]
    assert len(periods) == 6, periods
    assert len(set(periods.values())) == 1, periods


def _container(path: Path, kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pod spec of the ``kind`` object, its container ``name``)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == kind:
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                if container["name"] == name:
                    return pod, container
    raise AssertionError(f"{path.name}: no {kind} container {name}")


def _flag_values(words: list[str], flag: str) -> list[str]:
    i = words.index(flag)
    values = []
    for word in words[i + 1:]:
        if word.startswith("-"):
            break
        values.append(word)
    return values


def test_per_node_pod_shares_memory_and_uid_and_counts_nodes_once() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(K8S_PER_NODE.read_text())}
    pod, service = _container(K8S_PER_NODE, "Job", "clipserve")
    _, trainer = _container(K8S_PER_NODE, "Job", "trainer")
    assert service.get("restartPolicy") == "Always", "the service is a sidecar: it must start before the trainer"
    shm = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
    for container in (service, trainer):
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/dev/shm") in shm, f"{container['name']} has no memory-backed /dev/shm"
        assert "runAsUser" not in container.get("securityContext", {}), "one uid for both, from the pod"
    assert pod["securityContext"]["runAsUser"] == 1000
    env = {item["name"]: item for item in service["env"]}
    words = trainer["command"] + trainer["args"]
    nodes = {"completions": docs["Job"]["spec"]["completions"], "parallelism": docs["Job"]["spec"]["parallelism"],
             "CLIPSERVE_NUM_SHARDS": int(env["CLIPSERVE_NUM_SHARDS"]["value"]),
             "--nnodes": int(_flag_values(words, "--nnodes")[0])}
    assert len(set(nodes.values())) == 1, f"NNODES differs: {nodes}"
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["CLIPSERVE_SHARD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == index
    trainer_env = {item["name"]: item for item in trainer["env"]}
    assert _flag_values(words, "--node-rank") == ["$(NODE_RANK)"]
    assert trainer_env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == index
    assert _flag_values(words, "--service-layout") == ["per-node"]
    master = _flag_values(words, "--master-addr")[0]
    job, headless = docs["Job"]["metadata"]["name"], docs["Service"]["metadata"]["name"]
    assert master == f"{job}-0.{headless}" and pod["subdomain"] == headless
    assert docs["Service"]["spec"]["clusterIP"] == "None"


def test_decode_hosts_one_url_per_shard_with_token() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(K8S_DECODE_HOSTS.read_text())}
    _, decode = _container(K8S_DECODE_HOSTS, "StatefulSet", "clipserve")
    trainer_pod, trainer = _container(K8S_DECODE_HOSTS, "Job", "trainer")
    _, wait = _container(K8S_DECODE_HOSTS, "Job", "wait-for-decode-hosts")
    replicas = docs["StatefulSet"]["spec"]["replicas"]
    env = {item["name"]: item for item in decode["env"]}
    assert int(env["CLIPSERVE_NUM_SHARDS"]["value"]) == replicas
    assert env["CLIPSERVE_SHARD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    name, headless = docs["StatefulSet"]["metadata"]["name"], docs["Service"]["metadata"]["name"]
    assert docs["StatefulSet"]["spec"]["serviceName"] == headless and docs["Service"]["spec"]["clusterIP"] == "None"
    port = docs["Service"]["spec"]["ports"][0]["port"]
    urls = [f"http://{name}-{k}.{headless}:{port}" for k in range(replicas)]
    words = trainer["command"] + trainer["args"]
    assert _flag_values(words, "--server") == urls, "one URL per shard, in shard order"
    assert wait["args"][1:] == urls
    assert _flag_values(words, "--transport") == ["http"]
    secret = env["CLIPSERVE_TOKEN"]["valueFrom"]["secretKeyRef"]
    trainer_env = {item["name"]: item for item in trainer["env"]}
    assert trainer_env["CLIPSERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == secret, "the trainer sends the services' token"
    assert trainer_pod["securityContext"]["runAsNonRoot"] is True

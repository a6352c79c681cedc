"""deploy/: the scripts parse and pass shellcheck, and a dry run shows the exact commands —
both entrypoints as gen2 functions, the queue or topic, grants on single resources only."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from conftest import CLEAN_ENV, REPO

SCRIPTS = ["deploy/gcp/deploy.sh", "deploy/azure/deploy.sh", ".ci/install_serverless.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed: run `bash .ci/install_serverless.sh` (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", "-x", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def dry_run(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**CLEAN_ENV, "DRY_RUN": "1", "PATH": os.environ["PATH"], **env},
    )  # fmt: skip


def commands(proc: subprocess.CompletedProcess) -> list[str]:
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_gcp_cloud_tasks_dry_run():
    proc = dry_run("deploy/gcp/deploy.sh", PROJECT="demo-proj", INVOKER="user:me@example.com")
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    deploys = [c for c in cmds if " functions deploy " in c]
    assert len(deploys) == 2 and all("--gen2" in c and "--no-allow-unauthenticated" in c for c in deploys)
    assert "--entry-point=execute_node" in deploys[0] and "--entry-point=load_goal" in deploys[1]
    assert "SWARM_EXECUTE_NODE_URL=https://swarm-execute-node-HASH.a.run.app" in deploys[1]
    assert "--service-account=swarm-fn@demo-proj.iam.gserviceaccount.com" in deploys[0]
    assert "SWARM_TASKS_SERVICE_ACCOUNT=swarm-fn@demo-proj.iam.gserviceaccount.com" in deploys[0]
    assert "--set-secrets=OPENAI_API_KEY=openai-api-key:latest" in deploys[0]
    assert any(c.endswith("tasks queues create swarm-nodes --location=europe-west1") for c in cmds)
    assert any("--max-attempts=5" in c for c in cmds)
    assert any("storage buckets create gs://demo-proj-swarm" in c for c in cmds)
    grants = [c for c in cmds if "add-iam-policy-binding" in c]
    assert grants and not any(" projects add-iam-policy-binding" in c for c in grants)  # no project-wide role
    roles = {c.split("--role=")[1].split()[0] for c in grants if "--role=" in c}
    assert roles == {"roles/storage.objectUser", "roles/secretmanager.secretAccessor", "roles/cloudtasks.enqueuer", "roles/iam.serviceAccountUser"}
    assert any("add-invoker-policy-binding swarm-load-goal" in c and "--member=user:me@example.com" in c for c in cmds)
    assert "load_goal     https://swarm-load-goal-HASH.a.run.app" in proc.stdout
    # the package is not on PyPI: `pip install 'swarm[gcp]'` would fetch another project's
    assert "(pip install -e '.[gcp]' in this checkout," in proc.stdout and "swarm[" not in proc.stdout


def test_gcp_pubsub_dry_run_and_bad_combinations():
    proc = dry_run("deploy/gcp/deploy.sh", PROJECT="demo-proj", DISPATCHER="pubsub", OPENAI_SECRET="")
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    sub = next(c for c in cmds if "pubsub subscriptions create swarm-nodes-push" in c)
    assert "--push-endpoint=https://swarm-execute-node-HASH.a.run.app" in sub and "--push-auth-service-account=swarm-fn@" in sub
    assert "--dead-letter-topic=swarm-nodes-dead" in sub and "--max-delivery-attempts=5" in sub
    assert not any("--set-secrets" in c for c in cmds)
    assert dry_run("deploy/gcp/deploy.sh", PROJECT="p", DISPATCHER="pubsub", AUTH="token").returncode == 2
    assert dry_run("deploy/gcp/deploy.sh", PROJECT="p", DISPATCHER="http").returncode == 2
    assert "set PROJECT" in dry_run("deploy/gcp/deploy.sh").stderr


def test_azure_dry_run_keeps_secrets_out_of_the_output():
    proc = dry_run(
        "deploy/azure/deploy.sh",
        RESOURCE_GROUP="rg", STORAGE_ACCOUNT="swarmstore1", APP_NAME="swarm-app-1", OPENAI_API_KEY="sk-very-secret", SWARM_API_TOKEN="tok-secret",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    assert any("functionapp create --name swarm-app-1" in c and "--runtime python" in c and '--assign-identity [system]' in c for c in cmds)
    assert any("storage queue create --name swarm-nodes " in c for c in cmds)
    scopes = [c.split("--scope ")[1].split()[0] for c in cmds if "role assignment create" in c]
    assert [s.rsplit("/", 2)[1:] for s in scopes] == [["containers", "swarm"], ["queues", "swarm-nodes"]]
    assert any("deployment source config-zip" in c and "--build-remote true" in c for c in cmds)
    assert "sk-very-secret" not in proc.stdout + proc.stderr and "tok-secret" not in proc.stdout + proc.stderr
    # ... and still reach the app, by name, beside what it needs to find its store and queue
    settings = next(c for c in cmds if "functionapp config appsettings set --name swarm-app-1" in c)
    names = settings.split("--settings ")[1].removesuffix(" (values not shown)").split()
    assert {"SWARM_STORE", "SWARM_DISPATCHER", "SWARM_AZURE_QUEUE", "OPENAI_API_KEY", "SWARM_API_TOKEN"} <= set(names)


def test_azure_openai_goes_with_its_key_which_stays_out_of_the_output():
    base = {"RESOURCE_GROUP": "rg", "STORAGE_ACCOUNT": "swarmstore1", "APP_NAME": "swarm-app-1", "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com"}
    proc = dry_run("deploy/azure/deploy.sh", **base)
    assert proc.returncode != 0 and "set AZURE_OPENAI_API_KEY too" in proc.stderr  # a deployment with no model is refused
    proc = dry_run("deploy/azure/deploy.sh", **base, AZURE_OPENAI_API_KEY="az-very-secret")
    assert proc.returncode == 0, proc.stderr
    settings = next(c for c in commands(proc) if "functionapp config appsettings set" in c)
    assert {"AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"} <= set(settings.split("--settings ")[1].split())
    assert "az-very-secret" not in proc.stdout + proc.stderr


def test_gcp_entry_file_exposes_both_functions():
    spec = importlib.util.spec_from_file_location("gcp_main", REPO / "deploy" / "gcp" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.load_goal) and callable(module.execute_node)
    gcp = (REPO / "deploy/gcp/requirements.txt").read_text()
    azure = (REPO / "deploy/azure/requirements.txt").read_text()
    for name in ("functions-framework", "google-cloud-tasks", "google-cloud-pubsub", "gcsfs", "openai", "pydantic"):
        assert name in gcp
    for name in ("azure-functions", "azure-storage-queue", "azure-identity", "adlfs", "openai", "pydantic"):
        assert name in azure


# What each deployment imports: its entry file, then (lazily, on its first call) its store, dispatchers and model.
DEPLOYED_IMPORTS = {
    "deploy/gcp/requirements.txt": ("deploy/gcp/main.py", "backends.gcs", "google.cloud.tasks_v2", "google.cloud.pubsub_v1", "openai"),
    "deploy/azure/requirements.txt": ("deploy/azure/function_app.py", "backends.azure", "azure.storage.queue", "azure.identity", "openai"),
}
ONLY_REQUIREMENTS = """
import importlib.metadata as md, importlib.util, re, sys
from packaging.requirements import Requirement
requirements, entry, *modules = sys.argv[1:]
names = [re.split(r"[<>=!~\\[; ]", line.strip())[0] for line in open(requirements) if line.strip() and not line.startswith("#")]
allowed, todo = {"swarm"}, [n.lower().replace("_", "-") for n in names]  # swarm: the staged source
while todo:  # every distribution the requirements install, with their own dependencies
    name = todo.pop()
    if name not in allowed:
        allowed.add(name)
        for r in md.distribution(name).requires or []:
            req = Requirement(r)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
owners = md.packages_distributions()
class OnlyRequirements:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = {d.lower().replace("_", "-") for d in owners.get(top, ())}
        if dists and not dists & allowed and top not in sys.stdlib_module_names:
            raise ImportError(f"{name} comes from {sorted(dists)}, which {requirements} does not install")
sys.meta_path.insert(0, OnlyRequirements())
spec = importlib.util.spec_from_file_location("deployed_entry", entry)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for module in modules:
    importlib.import_module(module)
"""


@pytest.mark.parametrize("requirements", sorted(DEPLOYED_IMPORTS))
def test_a_deployment_imports_nothing_its_requirements_do_not_install(requirements):
    """The cloud build installs only requirements.txt: what the code imports beyond it fails every call."""
    proc = subprocess.run(
        [sys.executable, "-c", ONLY_REQUIREMENTS, requirements, *DEPLOYED_IMPORTS[requirements]],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=CLEAN_ENV, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_gcp_redeploy_starts_execute_node_with_its_own_url(tmp_path):
    """Redeployed without SWARM_EXECUTE_NODE_URL until a later update, execute_node answered every
    delivery of a running swarm with a 500 for that long: longer than a queue retries (2+4+8+16 s)."""
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(  # every resource exists already; describing execute_node gives its URL
        "#!/usr/bin/env bash\n"
        'case "$*" in *"functions describe swarm-execute-node"*) echo https://swarm-execute-node-x1.a.run.app ;;'
        ' *"functions describe"*) echo https://swarm-load-goal-x1.a.run.app ;; *"projects describe"*) echo 42 ;; esac\n'
    )
    fake.chmod(0o755)
    proc = dry_run("deploy/gcp/deploy.sh", PROJECT="demo-proj", DRY_RUN="0", PATH=f"{fake.parent}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    execute = next(c for c in cmds if " functions deploy swarm-execute-node " in c)
    assert "SWARM_EXECUTE_NODE_URL=https://swarm-execute-node-x1.a.run.app" in execute
    assert not any(" run services update " in c for c in cmds)
    load = next(c for c in cmds if " functions deploy swarm-load-goal " in c)
    assert "SWARM_EXECUTE_NODE_URL=https://swarm-execute-node-x1.a.run.app" in load

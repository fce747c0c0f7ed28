"""One MLflow account per role, each allowed only what its step needs (MLflow's basic-auth permission API).

The server's ``default_permission`` is READ: every account can read the registry and the runs. On top of that:

- training (``cxrlt-training``): creates its own experiments and runs (pipeline steps and TrainJobs log training);
- registration (``cxrlt-registration``): EDIT on the registered model and on the registry and audit experiments
  (it registers versions and moves ``challenger``);
- promotion (``cxrlt-promotion``): MANAGE on the registered model, EDIT on the audit experiment (it moves
  ``champion`` and removes ``challenger``);
- serving (``cxrlt-serving``): nothing more (the Triton init container only downloads).

MLflow grants per registered model, not per alias, so the registration account could move ``champion`` too; what it
can move it to is bounded by the evidence signature (only versions it signed after a passing gate are served or
promoted) and every move is in the audit trail with its account. The registered model and the two experiments are
created here by the admin, so no other account becomes their owner by creating them first.
"""

from __future__ import annotations

from cxrlt.errors import InvalidInputError
from cxrlt.platform import MLFLOW_ROLE_USERS, MLFLOW_ROLES, REGISTERED_MODEL
from cxrlt.registry import AUDIT_EXPERIMENT, REGISTRY_EXPERIMENT, RegistryError

#: role -> (permission on the registered model, {experiment: permission}); nothing listed = the default READ
ROLE_GRANTS: dict[str, tuple[str | None, dict[str, str]]] = {
    "training": (None, {}),
    "registration": ("EDIT", {REGISTRY_EXPERIMENT: "EDIT", AUDIT_EXPERIMENT: "EDIT"}),
    "promotion": ("MANAGE", {AUDIT_EXPERIMENT: "EDIT"}),
    "serving": (None, {}),
}
MIN_PASSWORD_LENGTH = 12


def _grant(auth, user: str, resource_type: str, resource_id: str, permission: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(user, resource_type, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(user, resource_type, resource_id)  # a rerun sets the permission this table says
        auth.grant_user_permission(user, resource_type, resource_id, permission)


def bootstrap_roles(tracking_uri: str, passwords: dict[str, str], name: str = REGISTERED_MODEL) -> dict:
    """Create (or reset the password of) each role's account and grant it its permissions; run as the MLflow admin
    (MLFLOW_TRACKING_USERNAME/PASSWORD). Idempotent. Returns the accounts and their grants (no passwords)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    missing = [r for r in MLFLOW_ROLES if len(passwords.get(r) or "") < MIN_PASSWORD_LENGTH]
    if missing:
        raise InvalidInputError(f"roles {missing} need a password of at least {MIN_PASSWORD_LENGTH} characters")
    auth, client = AuthServiceClient(tracking_uri), MlflowClient(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"cannot read {name} as the admin ({exc.error_code}: {exc.message})") from None
        client.create_registered_model(name, description="cxrlt served bundle (challenger / champion aliases)")
    experiments = {}
    for experiment in {e for _, grants in ROLE_GRANTS.values() for e in grants}:
        found = client.get_experiment_by_name(experiment)
        experiments[experiment] = found.experiment_id if found else client.create_experiment(experiment)
    summary = {}
    for role in MLFLOW_ROLES:
        user = MLFLOW_ROLE_USERS[role]
        try:
            auth.create_user(user, passwords[role])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(user, passwords[role])
        model_permission, experiment_grants = ROLE_GRANTS[role]
        grants = {}
        if model_permission:
            _grant(auth, user, "registered_model", name, model_permission)
            grants[f"registered_model:{name}"] = model_permission
        for experiment, permission in experiment_grants.items():
            _grant(auth, user, "experiment", experiments[experiment], permission)
            grants[f"experiment:{experiment}"] = permission
        summary[role] = {"user": user, "grants": grants}
    return summary

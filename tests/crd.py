"""KubeRay's CRDs as the Kubernetes API server applies them, for checking this project's
manifests with jsonschema: the structural schema, defaults filled in, list types, int formats,
and the CEL rules it cannot run listed. The CRDs are read from ../shared/kuberay beside the
repository (KubeRay's ray-operator/config/crd/bases at commit feeaf72f); `crd_schema` skips,
saying so, where that folder is missing."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT.parent / "shared" / "kuberay"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a CRD is up to 25,000 lines


def crd_schema(kind: str) -> dict:
    """The v1 schema of KubeRay's CRD of `kind` (RayJob, RayService), as KubeRay ships it."""
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is missing: KubeRay's CRDs are kept beside the repository, in "
                    "../shared/kuberay (CI has it), not in a clone of it")
    for doc in yaml.load_all(path.read_text(), Loader=LOADER):
        if doc and doc.get("kind") == "CustomResourceDefinition" \
                and doc["spec"]["names"]["kind"] == kind:
            (v1,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
            return v1["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no {kind} CRD in {path}")


def validator_of(raw_schema: dict):
    """A jsonschema validator that refuses what the API server would."""
    schema = structural(raw_schema)
    # the root's metadata is ObjectMeta, which the API server checks itself, not by this schema
    schema["properties"]["metadata"] = {"type": "object"}
    VALIDATOR.check_schema(schema)
    return VALIDATOR(schema, format_checker=FORMATS)


def structural(schema: dict) -> dict:
    """A CRD's structural schema made into one that jsonschema applies as the API server does.
    - Fields the schema does not name are unknown: the server drops them, and `kubectl apply`
      (strict field validation by default) refuses them, where JSON Schema allows them. So each
      object without additionalProperties or x-kubernetes-preserve-unknown-fields gets
      additionalProperties: false, the one change that makes a misspelled field fail.
    - x-kubernetes-int-or-string is spelled out as anyOf integer or string where it is not.
    - nullable: true admits null, which JSON Schema would not.
    Defaults are filled in before the check, as the server does (defaulted() below);
    x-kubernetes-list-type and the int32/int64 formats are checked by VALIDATOR below; CEL
    rules (x-kubernetes-validations) cannot be, and a test shows the manifest reaches none."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: structural(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = structural(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [structural(sub) for sub in out[key]]
    if out.get("type") == "object" and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def list_type(validator, kind, instance, schema):
    """x-kubernetes-list-type: a `set` holds no item twice, a `map` no two items with the same
    x-kubernetes-list-map-keys (a key left out counts as its default, e.g. protocol TCP)."""
    if kind not in ("set", "map") or not validator.is_type(instance, "array"):
        return
    if kind == "set":
        keys = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        fields = schema["x-kubernetes-list-map-keys"]
        props = schema.get("items", {}).get("properties", {})
        keys = [json.dumps([item.get(f, props.get(f, {}).get("default")) for f in fields])
                for item in instance if isinstance(item, dict)]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        yield jsonschema.ValidationError(f"duplicate entries in a list-type {kind}: {twice}")


# OpenAPI v3.0's schema objects keep draft 4's keywords (boolean exclusiveMinimum, no const)
VALIDATOR = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                         {"x-kubernetes-list-type": list_type})
FORMATS = jsonschema.FormatChecker(formats=())
# the Go fields are int32 and int64: a larger number never reaches KubeRay intact
FORMATS.checks("int32")(lambda v: not isinstance(v, int) or -2**31 <= v < 2**31)
FORMATS.checks("int64")(lambda v: not isinstance(v, int) or -2**63 <= v < 2**63)


def defaulted(instance, schema: dict):
    """`instance` as the API server validates it: nulls in fields that are not nullable dropped,
    then each absent field that has a default filled in (which may satisfy `required`)."""
    if isinstance(instance, dict) and "properties" in schema:
        props = schema["properties"]
        out = {key: value for key, value in instance.items()
               if value is not None or props.get(key, {}).get("nullable")}
        out |= {key: copy.deepcopy(sub["default"]) for key, sub in props.items()
                if key not in out and "default" in sub}
        return {key: defaulted(value, props.get(key, {})) for key, value in out.items()}
    if isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {key: defaulted(value, schema["additionalProperties"])
                for key, value in instance.items()}
    if isinstance(instance, list) and "items" in schema:
        return [defaulted(item, schema["items"]) for item in instance]
    return instance


def errors(validator, manifest: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(defaulted(manifest, validator.schema))]


def cel_rules(instance, schema: dict, path: str = "") -> list[str]:
    """The CEL rules (x-kubernetes-validations) on the fields `instance` sets."""
    rules = schema.get("x-kubernetes-validations", [])
    found = [f"{path or '.'}: {rule['rule']}" for rule in rules]
    if isinstance(instance, dict):
        for key, value in instance.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                found += cel_rules(value, sub, f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            found += cel_rules(item, schema["items"], f"{path}[{i}]")
    return found


def quantity(text: str | int) -> float:
    """A Kubernetes quantity ("500m", "24Gi", "3") as a number."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)

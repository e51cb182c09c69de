"""STAC Items validated offline against the extension schemas in `tests/schemas` (their
README says where each comes from)."""

import json
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

FOLDER = Path(__file__).resolve().parent / "schemas"


def _registry() -> Registry:
    """Each schema under its URL and under its own `$id` (processing v1.1.0's names v1.0.0),
    so that every `$ref` between them resolves here."""
    resources = []
    for path in FOLDER.glob("*.json"):
        name, version = path.stem.rsplit("-", 1)
        contents = json.loads(path.read_text())
        resource = Resource.from_contents(contents)
        for url in {
            f"https://stac-extensions.github.io/{name}/{version}/schema.json",
            contents["$id"].rstrip("#"),
        }:
            resources += [(url, resource), (url + "#", resource)]
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validate_extensions(item: dict) -> list[str]:
    """Validate `item` against the schema of each extension it names that is shipped here;
    the URLs validated. Raises `jsonschema.ValidationError` at the first problem."""
    validated = []
    for url in item["stac_extensions"]:
        try:
            schema = REGISTRY.contents(url)
        except LookupError:
            continue
        jsonschema.Draft7Validator(schema, registry=REGISTRY).validate(item)
        validated.append(url)
    return validated

"""Apply command-line style overrides to a :class:`DemoSceneConfig`, re-validating the result."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from patchsplat.config import DemoSceneConfig
from patchsplat.errors import InputError


def with_overrides(base: DemoSceneConfig | None, **overrides: Any) -> DemoSceneConfig:
    """``base`` (None -> defaults) with the non-None ``overrides`` applied and validated again.

    ``defects`` may be given as a mapping (or model) of just the defect keys to change. A bad value
    raises ``InputError('scene.demo.<key>', '<pydantic message> (got <value>)', kind='bad_params')``.
    """
    data = (base or DemoSceneConfig()).model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "defects" and isinstance(value, (dict, BaseModel)):
            changes = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
            data["defects"] = {**data["defects"], **changes}
        else:
            data[key] = value
    try:
        return DemoSceneConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        else:
            problem = f"{first['msg']} (got {first.get('input')!r})"
        more = len(error.errors()) - 1
        if more:
            problem += f" (and {more} more problems)"
        raise InputError(f"scene.demo.{key}", " ".join(problem.split()), kind="bad_params") from None

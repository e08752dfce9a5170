"""requirements.txt (the pins of a tested environment) agrees with pyproject.toml's pins."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).parent.parent


def _normalised(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
  pins = {}
  for line in lines:
    line = line.split("#", 1)[0].strip()
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
    if match:
      pins[_normalised(match.group(1))] = match.group(2)
  return pins


def test_requirements_hold_every_pin_of_pyproject():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  declared = list(project["dependencies"])
  for extra in project["optional-dependencies"].values():
    declared += [d for d in extra if not d.startswith(project["name"])]
  pyproject_pins = _pins(declared)
  assert len(pyproject_pins) == len(declared), "every pyproject dependency is pinned with =="
  requirements = (ROOT / "requirements.txt").read_text().splitlines()
  frozen = _pins(requirements)
  assert _normalised(project["name"]) not in frozen
  differing = {name: (version, frozen.get(name)) for name, version in pyproject_pins.items()
               if frozen.get(name) != version}
  assert not differing, f"pyproject pin vs requirements.txt: {differing}"


def test_ci_installs_from_requirements():
  assert "-r requirements.txt" in (ROOT / ".ci" / "run").read_text()

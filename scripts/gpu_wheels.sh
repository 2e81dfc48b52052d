#!/usr/bin/env bash
# Fill .whl/ (repository root) with the Python wheels that the lent GPU machine (kind nvidia-h200)
# lacks, so that scripts/gpu_check.sh can run there. That machine has no network: the wheels travel
# with the working tree (name `.whl` in the run tool's `carry`) and are installed there.
#
# Here (a machine where pip reaches PyPI), from anywhere:
#
#     bash scripts/gpu_wheels.sh
#
# There, at the start of the command line:
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
#
# (gpu_check.sh prepends the checkout to PYTHONPATH itself; PATH gives py-spy.) liger-kernel's
# optional CuTe-DSL backend wants nvidia-cutlass-dsl, which is not carried (not a requirement, and
# large): liger's dispatcher skips that backend when its import fails and uses its Triton kernels.
#
# The GPU machine: Python 3.12.3 (x86_64, glibc manylinux), torch 2.11.0 and triton 3.6.0, and the
# packages that /work/.library/device/KINDS.md lists under "Python packages already there" (among
# them numpy, pandas, pyarrow, pillow, matplotlib, scipy, scikit-learn, safetensors 0.8.0,
# tokenizers 0.23.2, huggingface_hub 1.33.0, transformers 5.17.0, requests, click, jinja2, werkzeug,
# aiohttp, protobuf, pyyaml, regex, xxhash, psutil, tqdm). Carried below: what it lacks, at this
# project's .venv versions, with every non-extra Requires-Dist of those that it also lacks; plus
# transformers at the .venv's version (5.17.0 there is older), and a few small pure-python packages
# that are there but at unknown versions while a carried wheel asks for a recent one.
# Not carried, as the GPU machine's own versions satisfy the carried wheels' requirements:
#   huggingface_hub 1.33.0 (transformers 5.24.0 and datasets 5.2.0 ask >=1.31.0,<3), tokenizers
#   0.23.2 (>=0.23.1,<0.24), safetensors 0.8.0 (>=0.8.0), regex (transformers 5.17.0 there already
#   asks >=2025.10.22, as 5.24.0 does).
# Versions still unknown there, that a carried wheel bounds (check with one `python3 -m pip show`
# there if something fails): pyarrow (datasets: >=24), protobuf (mlflow's and OpenTelemetry's
# generated code: >=5.26), certifi (databricks-sdk: >=2026.10.19; only metadata), click (>=8.4.2
# for huggingface_hub 1.33 itself), werkzeug (Flask: >=3.1), zipp (importlib_metadata: >=3.20).
#
# This script owns .whl/: it deletes the folder, downloads the pinned set (exactly one version
# of each name; two of one name stop the install there), then checks the total against 60 MiB
# (the run tool carries at most 64 MiB per call, wheels and the rest of the working tree together;
# the checkout itself is about 1.2 MB). As pinned: 54 wheels, about 52.5 MiB.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3

# Pure-python wheels (py3-none-any, or py312-none-any for multiprocess).
pure=(
    # this project's libraries
    transformers==5.24.0            # the GPU machine has 5.17.0; the project is tested with 5.24.0
    datasets==5.2.0
    dill==0.4.1                     # datasets (<0.4.2), multiprocess
    multiprocess==0.70.19           # datasets (<0.70.20)
    fsspec==2026.9.0                # datasets asks <=2026.9.0; the GPU machine's version is unknown
    optuna==5.0.0
    alembic==1.20.1                 # optuna, mlflow (sqlite store migrations)
    Mako==1.4.3                     # alembic
    colorlog==6.12.0                # optuna
    liger-kernel==0.8.5             # optional [gpu] extra: needs only torch and triton, both there
    # mlflow and its two halves
    mlflow==3.17.2
    mlflow-skinny==3.17.2
    mlflow-tracing==3.17.2
    # mlflow-skinny / mlflow-tracing requirements
    opentelemetry-api==1.45.2
    opentelemetry-sdk==1.45.2
    opentelemetry-proto==1.45.2
    opentelemetry-semantic-conventions==0.66b2
    pydantic==2.14.4
    annotated-types==0.8.0          # pydantic
    typing-inspection==0.4.5        # pydantic, fastapi
    typing_extensions==4.16.0       # pydantic and pydantic-core ask >=4.16.0; the GPU machine's is unknown
    cachetools==7.3.3
    databricks-sdk==0.162.0
    google-auth==2.63.0             # databricks-sdk
    pyasn1-modules==0.4.2           # google-auth
    pyasn1==0.6.5                   # pyasn1-modules
    fastapi==0.165.0
    starlette==1.10.0               # fastapi, mlflow-skinny
    uvicorn==0.54.0
    GitPython==3.2.1
    gitdb==4.0.12                   # GitPython
    smmap==5.0.3                    # gitdb
    importlib_metadata==9.1.0
    python-dotenv==1.2.4
    sqlparse==0.6.1
    # mlflow (full) requirements: its server and model flavours, imported lazily, carried so that
    # the set is complete by its metadata
    Flask==3.1.3
    flask-cors==6.0.5
    blinker==1.9.0                  # Flask
    itsdangerous==2.2.0             # Flask
    graphene==3.4.3
    graphql-core==3.2.14            # graphene
    graphql-relay==3.2.0            # graphene
    gunicorn==26.2.0
    huey==3.5.4
    docker==7.2.0
    skops==0.16.0
    prettytable==3.18.0             # skops
    wcwidth==0.9.4                  # prettytable
    pycparser==3.12                 # cffi
)

# Platform wheels (CPython 3.12, x86_64 manylinux).
platform=(
    SQLAlchemy==2.1.9               # optuna, alembic, mlflow (sqlite tracking store)
    pydantic-core==2.50.5           # pydantic (==)
    cryptography==50.0.2            # mlflow, google-auth
    cffi==2.1.1                     # cryptography
    py-spy==0.4.3                   # stack dumps of the training run in gpu_check.sh
)

rm -rf .whl
mkdir -p .whl
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --disable-pip-version-check -q -d .whl "${pure[@]}" "${platform[@]}"

# Exactly one wheel per pinned name.
count=$(find .whl -maxdepth 1 -type f -name '*.whl' | wc -l)
dupes=$(for f in .whl/*.whl; do basename "$f" | cut -d- -f1 | tr 'A-Z.' 'a-z_'; done | sort | uniq -d)
if [[ -n $dupes ]] || ((count != ${#pure[@]} + ${#platform[@]})); then
    echo "gpu_wheels: expected $((${#pure[@]} + ${#platform[@]})) wheels, one per name; found $count" \
        "${dupes:+(more than one of: $dupes)}" >&2
    exit 1
fi

limit=$((60 * 1024 * 1024))
total=$(find .whl -maxdepth 1 -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
if ((total > limit)); then
    echo "gpu_wheels: .whl holds $total bytes ($((total / 1024 / 1024)) MiB), over the 60 MiB limit" \
        "(the run tool carries 64 MiB a call in all): drop a wheel from the lists" >&2
    exit 1
fi

# Keep .whl/ out of git.
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"

echo "gpu_wheels: $count wheels, $((total / 1024)) KiB in .whl/"

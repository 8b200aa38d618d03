# The cluster image: what cluster.yaml, deploy/kuberay/*.yaml and docs/kubernetes.md run.
#   docker build -t vadclip:0.1.0 .      (the tag: vadclip:<the version in vadclip/_version.py>)
# then push it where the nodes pull from (a registry) and name it there.
# The rayproject/ray image of the Ray version in use (the tag names the ray== pin of
# constraints.txt), FFmpeg's shared libraries for torchcodec (the fastest CPU decoder, and
# NVDEC with --decode-device cuda; decord and PyAV carry their own), and this project installed
# against constraints.txt: the versions CI tests. tests/test_image.py runs the install steps
# below in a clean venv and checks that every manifest names this image.
FROM rayproject/ray:2.60.0-py311-gpu

RUN sudo apt-get update -qq \
 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg \
 && sudo rm -rf /var/lib/apt/lists/*

# the job entry points (jobs/*.py) run from here: a RayJob's entrypoint `python jobs/score_archive.py`
WORKDIR /home/ray/vadclip
COPY --chown=ray:users pyproject.toml README.md constraints.txt ./
COPY --chown=ray:users vadclip ./vadclip
COPY --chown=ray:users jobs ./jobs
RUN python -m pip install --no-cache-dir -c constraints.txt ".[cluster]"
RUN python -c "import vadclip.cli, vadclip.report.html as r; r._template()" && vadclip --help > /dev/null

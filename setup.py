"""sfmed-lf: the SF-Med recipe as a LLaMA-Factory 0.9.5 extension.

Besides the package, the distribution installs ``sfmed_lf.pth`` at the top of site-packages. Python runs it at
start-up; it installs a tiny import hook that activates the plugin the first time LLaMA-Factory is imported (see
``sfmed_lf/_bootstrap.py``). Both a regular and an editable (PEP 660) install ship the file.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "sfmed_lf.pth"
PTH_LINE = "import sfmed_lf._bootstrap\n"


class BuildPyWithPth(build_py):
    """Puts the start-up .pth file at the root of the wheel, i.e. directly into site-packages."""

    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy so that the wheel it writes also carries the start-up .pth."""

    def __init__(self, strategy) -> None:  # noqa: ANN001 - setuptools' private strategy type
        self._strategy = strategy

    def __call__(self, wheel, files, mapping) -> None:  # noqa: ANN001
        wheel.writestr(PTH_NAME, PTH_LINE)
        self._strategy(wheel, files, mapping)

    def __enter__(self) -> "_StrategyWithPth":
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:  # noqa: ANN002
        self._strategy.__exit__(*exc_info)


class EditableWheelWithPth(editable_wheel):
    """PEP 660 editable wheels do not carry build_py's files, so the .pth is added through the strategy.

    ``_select_strategy`` is setuptools-internal; pyproject.toml pins the tested setuptools range and the tests
    install the package editable into a fresh virtualenv.
    """

    def _select_strategy(self, name, tag, build_lib):  # noqa: ANN001, ANN202
        return _StrategyWithPth(super()._select_strategy(name, tag, build_lib))


setup(
    name="sfmed-lf",
    version="0.1.0",
    description="SF-Med: Chinese medical LLM recipe (CPT, SFT, preference data, online-merging DPO) for LLaMA-Factory",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["sfmed_lf", "sfmed_lf.*"]),
    package_data={"sfmed_lf": ["resources/*", "eval/metrics/*/*.py"]},
    install_requires=[
        "llamafactory==0.9.5",
        "deepspeed>=0.16",
        "datasketch>=1.6",
        "numba>=0.61",  # the MinHash and keep-rule kernels of `sfmed data dedup`, online merging's CPU loops
        "datatrove>=0.10",  # `sfmed data dedup` with engine: datatrove (local, Slurm or Ray executors)
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "pyyaml>=6",
        "tqdm>=4.66",
        "httpx>=0.27",
        "jieba>=0.42",
        "matplotlib>=3.7",
        "faiss-cpu>=1.8",  # the privacy guard's vector index (GPU hosts may install faiss-gpu instead)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "selenium>=4.30",
            "rouge-chinese>=1.0.3",
            "evaluate>=0.4",
            "rensa>=0.5",  # a peer in benchmarks/bench_dedup.py
            "hypothesis>=6.100",
            "import-linter>=2.1",
        ],
        "metrics": ["evaluate>=0.4"],
    },
    entry_points={
        "console_scripts": ["sfmed=sfmed_lf.cli:main"],
        # Discovered by LLaMA-Factory once patches/0001-plugin-entry-points.patch is merged upstream.
        "llamafactory.plugins": ["sfmed=sfmed_lf.integration:activate"],
    },
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
)

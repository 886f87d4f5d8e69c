"""mslam_jax: massively multilingual joint speech-and-text pre-training (mSLAM) in JAX/Flax."""
import setuptools

# Ranges are those the test suite runs against; jax 0.10 is the newest line for Python 3.11.
INSTALL_REQUIRES = [
    "jax[cpu]>=0.10.0,<0.11",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "google-cloud-storage>=2.18,<4",  # Orbax queries a gs:// run directory's bucket with it
    "seqio>=0.0.20,<0.1",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-datasets>=4.9.9,<5",
    # 0.2.3's generated protobuf code needs protobuf >= 7.36 at run time without saying so, and
    # apache-beam (the prepare extra) caps protobuf below 7: seqio would fail to import.
    "sentencepiece>=0.2.0,<0.2.3",
    "gin-config>=0.5.0,<0.6",
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.20,<2.22",  # clu's TensorBoard SummaryWriter needs it
    "numpy>=2.0,<3",
    "scipy>=1.13,<2",
    "babel>=2.16,<3",
    "espeakng-loader>=0.2.4,<0.3",
    "pycountry>=24.6,<27",  # ISO 639-3 codes and the ISO-codes gettext translations (text)
    "num2words>=0.5.13,<0.6",  # numbers spelled out in ~50 languages (text)
    "fonttools>=4.50,<5",  # Unicode script property of characters
    "soundfile>=0.12,<0.15",
    "jiwer>=3.0,<5",
    "sacrebleu>=2.4,<3",  # BLEU and chrF of translations
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "scikit-learn>=1.5,<2",
]

# `mslam data prepare` runs on Apache Beam (DirectRunner here; Dataflow, Flink or Spark at scale).
PREPARE_REQUIRES = ["apache-beam>=2.60,<3", "pyarrow>=14"]

EXTRAS_REQUIRE = {
    "prepare": PREPARE_REQUIRES,
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "kaldi-native-fbank>=1.20,<2",
    ] + PREPARE_REQUIRES,
    # w2v-BERT 2.0 interop (mslam convert, tests/interop): torch's CPU wheel; safetensors alone
    # suffices to convert.
    "hf": ["torch==2.13.0", "transformers>=5.0,<6", "safetensors>=0.4,<1"],
}

setuptools.setup(
    name="mslam_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # tasks/ and gin_configs/ live at the top of the repository (as in t5x) but install inside the
    # mslam_jax namespace, so that no user gets a top-level package called `tasks`.
    packages=setuptools.find_packages(include=["mslam_jax", "mslam_jax.*"])
    + ["mslam_jax.tasks", "mslam_jax.gin_configs"],
    package_dir={"mslam_jax.tasks": "tasks", "mslam_jax.gin_configs": "gin_configs"},
    package_data={"mslam_jax.gin_configs": ["*.gin", "*/*.gin"], "mslam_jax": ["data/language_inventory.tsv"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["mslam=mslam_jax.cli:entry"]},
)

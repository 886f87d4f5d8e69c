"""The fine-tuning job: a task head on a pre-trained encoder, trained by trainer.Trainer through
train.train, exactly as pre-training is (sharded, Orbax checkpoints with exact resume, progress bar,
JSONL/TensorBoard metrics, NaN guard, SIGTERM).

  mslam finetune --task ctc --init_from RUN_DIR [--step N] --gin_file=runs/finetune_ctc.gin \
      --gin.MODEL_DIR=/tmp/run/ctc

An XTREME-S benchmark task over prepared corpora instead of the built-in corpus (the task picks
the head; batches stream from its SeqIO Mixture, evaluation/xtreme_s_data.py):

  mslam finetune --xtreme_s fleurs_asr --corpora fleurs=/data/prepared/fleurs --init_from RUN_DIR \
      --gin.MODEL_DIR=/tmp/run/fleurs_asr

A fine-tuning directory holds what any run directory does (checkpoints/, metrics.jsonl,
operative_config.gin) plus source.json (the pre-training run and step it started from, the task,
its classes) and vocab/; a job restarted on it resumes from its latest checkpoint.

Evaluators that need a fine-tuned head (ctc, zero_shot, alignment, langid_finetune) run the same
job through `checkpoint_head`, into RUN_DIR/finetune/<task>_step<N>_<settings hash>/, so a head is
trained once per checkpoint and settings, and a sweep killed mid-way resumes it.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np
from etils import epath

from mslam_jax import checkpoints
from mslam_jax import config as config_lib
from mslam_jax import resume_checks
from mslam_jax import storage
from mslam_jax import train as train_lib
from mslam_jax.data import translation as translation_data
from mslam_jax.evaluation import asr
from mslam_jax.evaluation import base
from mslam_jax.evaluation import char_lm
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import finetune
from mslam_jax.evaluation import report
from mslam_jax.evaluation import runner
from mslam_jax.evaluation import translation as translation_eval
from mslam_jax.evaluation import xtreme_s_data
from mslam_jax.interop import init_from

SOURCE_FILE = "source.json"  # the run and step a fine-tuned directory was made from
FINETUNE_SUBDIR = "finetune"  # heads the evaluators train, inside the pre-training run


def _encoder_source(task_model: Any, pretrained: Any) -> Any:
  """The part of a pre-training checkpoint's parameters that goes under the task's "encoder"."""
  pick = getattr(task_model, "pretrained_encoder", None)
  if pick is not None:
    return pick(pretrained)
  # Head tasks wrap the whole pre-trained model; others (the translation model) hold its encoder.
  return pretrained if isinstance(task_model, finetune._HeadTask) else pretrained["encoder"]  # pylint: disable=protected-access


def train_task(task_model: Any, iterator_fn: Callable[..., Any], model_dir: str, settings: finetune.FinetuneConfig,
               pretrained: Callable[[], Any], head_init: Callable[[Any], dict | None] | None = None,
               progress_bar: bool = True, tensorboard: bool = False, log_config: bool = True,
               eval_every: int = 0, evaluators: Sequence[Any] = (), corpus_dir: str | None = None) -> dict:
  """Trains `task_model` into `model_dir` (or resumes it there) for `settings.steps`; returns the
  trainer's summary. `pretrained()` gives the pre-training parameters (read only on a fresh start);
  `head_init(params)` may return head parameters to start from (e.g. a pre-trained CTC head).
  `evaluators` score the task model every `eval_every` steps (the trainer's periodic evaluation,
  into model_dir/eval/step_<N>/ and metrics.jsonl as eval/...)."""

  def initialize(params):
    merged, taken = init_from.merge_params(params, {"encoder": _encoder_source(task_model, pretrained())},
                                           include=[r"encoder/.*"])
    logging.info("Fine-tuning starts from %d pre-trained parameter arrays", len(taken))
    head = head_init(merged) if head_init is not None else None
    if head is not None:
      merged, _ = init_from.merge_params(merged, {"head": head}, include=[r"head/.*"])
    return merged

  storage.makedirs(model_dir)
  return train_lib.train(
      model_dir=model_dir, train_steps=settings.steps, model=task_model, iterator_fn=iterator_fn,
      optimizer=finetune.finetune_optimizer(settings), initialize_params=initialize,
      checkpoint_every=settings.checkpoint_every, keep_checkpoints=2, async_checkpoints=False, log_every=1,
      eval_every=eval_every, evaluators=evaluators, corpus_dir=corpus_dir, health_every=0,
      progress_bar=progress_bar, tensorboard=tensorboard, log_config=log_config)


def finished_params(model_dir: str, steps: int) -> Any | None:
  """The parameters of a fine-tuning directory whose job reached `steps`, else None."""
  done = checkpoints.checkpoint_steps(model_dir) if epath.Path(model_dir).is_dir() else []
  if not done or max(done) < steps:
    return None
  return checkpoints.load_params(checkpoints.step_dir(model_dir, max(done)))


def losses(model_dir: str) -> list[float]:
  """The training loss per step from a job's metrics.jsonl (a restarted job's later lines win)."""
  by_step = {}
  path = epath.Path(model_dir) / "metrics.jsonl"
  if path.exists():
    with path.open() as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if "loss" in record and not record.get("nonfinite"):
          by_step[int(record["step"])] = float(record["loss"])
  return [by_step[s] for s in sorted(by_step)]


def _write_source(model_dir: str, source: dict, vocab: Any = None) -> None:
  """source.json, and the CTC vocabulary under vocab/ (what `load_finetuned` reads back)."""
  storage.write_text(os.path.join(model_dir, SOURCE_FILE), json.dumps(source, indent=1))
  if hasattr(vocab, "save"):
    vocab.save(os.path.join(model_dir, "vocab"))


def _settings_dict(settings: finetune.FinetuneConfig) -> dict:
  return dataclasses.asdict(settings)


# -- heads for the evaluators ----------------------------------------------------------------------

_STUDENT_ONLY = re.compile(r"^(.*/)?SelfTrainingConfig\.")  # bindings no teacher's key holds (scoped ones too)


def _head_dir(ctx: base.EvalContext, name: str, key: dict) -> str:
  # The whole gin config joins the key: the model reads settings that change what it computes
  # without changing its parameters (the frontend's normalisation, ...) from gin as it runs, so a
  # head tuned under other bindings is another head, never one to read back.
  # Bindings, not the text: gin names the modules it imports with aliases that vary between processes.
  # Self-training's settings shape only the students, whose own keys hold them.
  bindings = {k: v for k, v in resume_checks.bindings(gin.config_str()).items() if not _STUDENT_ONLY.match(k)}
  key = {**key, "gin": bindings}
  digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
  if ctx.model_dir:
    return os.path.join(ctx.model_dir, FINETUNE_SUBDIR, f"{name}_step{ctx.step}_{digest}")
  # Parameters from nowhere in particular: a directory that lives as long as the context.
  scratch = ctx.shared.setdefault("scratch_dir", tempfile.TemporaryDirectory(prefix="mslam_finetune_"))
  return os.path.join(scratch.name, f"{name}_{digest}")


def _train_in_process(ctx: base.EvalContext, task: str, examples: finetune.Examples, num_classes: int,
                      settings: finetune.FinetuneConfig, model_dir: str, source: dict,
                      head_init: Callable[[Any], dict | None] | None = None,
                      task_model: Any = None, vocab: Any = None, pretrained: Callable[[], Any] | None = None) -> Any:
  """Trains a head job to its end (or reads a finished one back); `pretrained()` gives the encoder's
  starting parameters (default: the context's checkpoint)."""
  params = finished_params(model_dir, settings.steps)
  if params is not None:
    logging.info("Fine-tuned %s head found in %s", task, model_dir)
    return params
  _write_source(model_dir, source, vocab)
  task_model = task_model or finetune.head_task(task, ctx.model, num_classes, settings)
  iterator_fn = finetune.example_batches(examples, task, settings)
  summary = train_task(task_model, iterator_fn, model_dir, settings, pretrained=pretrained or (lambda: ctx.params),
                       head_init=head_init, log_config=False)
  if summary["stopped"] != "done":
    raise RuntimeError(f"fine-tuning in {model_dir} stopped early ({summary['stopped']})")
  return checkpoints.load_params(checkpoints.step_dir(model_dir, summary["final_step"]))


def _ctc_examples(corpus_dir: str, langs: Sequence[str], max_per_lang: int | None, vocab: Any,
                  settings: finetune.FinetuneConfig) -> finetune.Examples:
  """The CTC fine-tuning examples: `langs`' transcribed train speech and, with
  FinetuneConfig.text_ctc, the train text of every language of the corpus (held-out ones too), or of
  FinetuneConfig.text_languages where it names some."""
  examples = finetune.ctc_examples(eval_data.read_utterances(corpus_dir, "paired", "train", langs, max_per_lang),
                                   vocab, settings.max_audio_seconds)
  if settings.text_ctc > 0:
    text_langs = list(settings.text_languages) or None
    if text_langs:
      unknown = sorted(set(text_langs) - set(eval_data.corpus_languages(corpus_dir, "text", "train")))
      if unknown:
        raise ValueError(f"FinetuneConfig.text_languages names {unknown}, which have no train text in {corpus_dir}")
    examples = finetune.with_texts(examples, eval_data.read_utterances(corpus_dir, "text", "train", text_langs),
                                   vocab)
  return examples


def checkpoint_ctc_head(ctx: base.EvalContext, corpus_dir: str, train_langs: Sequence[str] | None,
                        max_per_lang: int | None, settings: finetune.FinetuneConfig) -> finetune.FinetunedCTC:
  """The CTC head fine-tuned on this checkpoint (the ctc, zero_shot and alignment evaluators share
  it when their settings agree): trained once into the run directory, then read back."""
  langs = list(eval_data.training_languages(corpus_dir) if train_langs is None else train_langs)
  key = {"task": "ctc", "corpus": storage.absolute(corpus_dir), "langs": langs, "max_per_lang": max_per_lang,
         "settings": _settings_dict(settings)}
  memo = ("ctc_head", json.dumps(key, sort_keys=True, default=str))
  if memo in ctx.shared:
    return ctx.shared[memo]
  vocab = eval_data.load_vocabulary(corpus_dir)
  model_dir = _head_dir(ctx, "ctc", key)
  examples = _ctc_examples(corpus_dir, langs, max_per_lang, vocab, settings)

  def head_init(params):
    dim = finetune._embed_dim(ctx.model, params["encoder"])  # pylint: disable=protected-access
    return finetune.pretrained_head(params["encoder"], settings.pretrained_head, dim, vocab.vocab_size, ctx.model,
                                    settings.ctc_upsample)

  source = {"task": "ctc", "model_dir": storage.absolute(ctx.model_dir) if ctx.model_dir else None,
            "step": ctx.step, "corpus_dir": storage.absolute(corpus_dir), "langs": langs,
            "num_classes": vocab.vocab_size, "settings": _settings_dict(settings)}
  params = _train_in_process(ctx, "ctc", examples, vocab.vocab_size, settings, model_dir, source, head_init,
                             vocab=vocab)
  tuned = finetune.FinetunedCTC(ctx.model, params, vocab, losses(model_dir), settings.batch_size, model_dir)
  ctx.shared[memo] = tuned
  return tuned


PSEUDO_LABELS_FILE = "pseudo_labels.jsonl"


def pseudo_labels(teacher: finetune.FinetunedCTC, utterances: Sequence[Any], lms: char_lm.LanguageModels | None,
                  beam_size: int = 8) -> list[Any]:
  """`utterances` with `teacher`'s transcripts as their text: beam search fused with each clip's
  language's character LM (plain beam search without `lms`). A clip's own text is never read; clips
  that decode to nothing are dropped. A bar shows the audio seconds transcribed a second."""
  texts = teacher.transcribe([u.audio for u in utterances], [u.lang for u in utterances], beam_size, lms,
                             progress="pseudo-labelling")
  return [dataclasses.replace(u, text=text.strip()) for u, text in zip(utterances, texts) if text.strip()]


def _with_share(labelled: finetune.Examples, extra: finetune.Examples, share: float) -> finetune.Examples:
  """`labelled` plus `extra`, the latter repeated so that it makes about `share` of the draws."""
  repeats = max(1, round(share / (1.0 - share) * len(labelled.audios) / len(extra.audios)))
  return dataclasses.replace(
      labelled, audios=labelled.audios + extra.audios * repeats, labels=labelled.labels + extra.labels * repeats,
      langs=labelled.langs + extra.langs * repeats,
      audio_samples=max(labelled.audio_samples, extra.audio_samples),
      label_length=max(labelled.label_length, extra.label_length))


def self_trained_ctc_head(ctx: base.EvalContext, corpus_dir: str, teacher: finetune.FinetunedCTC,
                          lms: char_lm.LanguageModels | None, train_langs: Sequence[str],
                          max_train_per_lang: int | None, untranscribed: Sequence[Any],
                          settings: finetune.FinetuneConfig, share: float = 0.5,
                          beam_size: int = 8) -> tuple[finetune.FinetunedCTC, list[Any]]:
  """One round of self-training: the `teacher` head transcribes the `untranscribed` clips
  (`pseudo_labels`, with the LM of each clip's language), then trains on, as the student, for
  `settings.steps` over its own training examples and those transcripts (`share` of the draws).
  Returns the student and the pseudo-labelled clips.

  The job lives in the run directory beside the teacher's, keyed by the teacher and the settings;
  the transcripts are written there (pseudo_labels.jsonl: id, lang, text) and read back on resume."""
  key = {"task": "ctc_self_training", "teacher": teacher.directory, "langs": list(train_langs),
         "max_per_lang": max_train_per_lang, "untranscribed": sorted(u.id for u in untranscribed),
         "settings": _settings_dict(settings), "share": share, "beam_size": beam_size,
         "lm": None if lms is None else [lms.order, lms.weight, lms.length_bonus]}
  memo = ("ctc_self_training", json.dumps(key, sort_keys=True, default=str))
  if memo in ctx.shared:
    return ctx.shared[memo]
  model_dir = _head_dir(ctx, "ctc_self_trained", key)
  path = epath.Path(model_dir) / PSEUDO_LABELS_FILE
  by_id = {u.id: u for u in untranscribed}
  if path.exists():
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labelled = [dataclasses.replace(by_id[r["id"]], text=r["text"]) for r in rows if r["id"] in by_id]
  else:
    labelled = pseudo_labels(teacher, list(untranscribed), lms, beam_size)
    storage.makedirs(model_dir)
    path.write_text("".join(json.dumps({"id": u.id, "lang": u.lang, "text": u.text}, ensure_ascii=False) + "\n"
                            for u in labelled), encoding="utf-8")
  logging.info("Self-training: %d of %d untranscribed clips pseudo-labelled by %s", len(labelled),
               len(untranscribed), teacher.directory)
  if not labelled:
    raise ValueError(f"self-training: the teacher {teacher.directory} transcribed none of {len(untranscribed)} clips")
  vocab = teacher.vocab
  examples = _ctc_examples(corpus_dir, train_langs, max_train_per_lang, vocab, settings)
  examples = _with_share(examples, finetune.ctc_examples(labelled, vocab, settings.max_audio_seconds), share)
  source = {"task": "ctc", "model_dir": storage.absolute(ctx.model_dir) if ctx.model_dir else None,
            "step": ctx.step, "teacher": teacher.directory, "corpus_dir": storage.absolute(corpus_dir),
            "langs": list(train_langs), "num_classes": vocab.vocab_size, "settings": _settings_dict(settings),
            "pseudo_labelled": len(labelled), "share": share}
  params = _train_in_process(ctx, "ctc", examples, vocab.vocab_size, settings, model_dir, source,
                             head_init=lambda _: teacher.params["head"], vocab=vocab,
                             pretrained=lambda: teacher.params["encoder"])
  student = finetune.FinetunedCTC(ctx.model, params, vocab, losses(model_dir), settings.batch_size, model_dir)
  ctx.shared[memo] = (student, labelled)
  return student, labelled


def self_training_metrics(ctx: base.EvalContext, corpus_dir: str, teacher: finetune.FinetunedCTC,
                          lms: char_lm.LanguageModels | None, train_langs: Sequence[str],
                          max_train_per_lang: int | None, held_out: Sequence[str], test: Sequence[Any],
                          prefix: str, config: finetune.SelfTrainingConfig, teacher_settings: finetune.FinetuneConfig,
                          beam_size: int = 8, lm_order: int = 6) -> dict[str, float]:
  """`config.rounds` rounds of self-training from `teacher` (`self_trained_ctc_head`, over the
  untranscribed speech of the pool `config.pool` names) and the last student's figures on `test`:
  {prefix}_self_trained_cer (_beam, _lm, per language), {prefix}_pseudo_labelled (clips) and
  {prefix}_pseudo_label_cer (the teacher's transcripts against the clips' stored text, which is
  only scored, never trained on). {} when `config.steps` is 0."""
  if not config.steps:
    return {}
  have = eval_data.corpus_languages(corpus_dir, "speech", "train")
  wanted = list(held_out) if config.pool == "held_out" else list(held_out) + list(train_langs)
  langs = [l for l in wanted if l in have]
  if not langs:
    raise ValueError(f"SelfTrainingConfig.steps is set, but {corpus_dir} has no untranscribed train speech "
                     f"(speech stream) of {wanted} (SelfTrainingConfig.pool = {config.pool!r})")
  untranscribed = [u for u in eval_data.read_utterances(corpus_dir, "speech", "train", langs, config.max_per_lang)
                   if len(u.audio)]
  student, student_lms = teacher, lms
  for _ in range(config.rounds):
    student, labelled = self_trained_ctc_head(ctx, corpus_dir, student, student_lms, train_langs, max_train_per_lang,
                                              untranscribed, config.student(teacher_settings), config.share, beam_size)
    student_lms = ctc_language_models(ctx, corpus_dir, student, train_langs, lm_order, beam_size=beam_size)
  metrics = finetune.ctc_metrics(student, test, f"{prefix}_self_trained", beam_size, student_lms)
  metrics[f"{prefix}_pseudo_labelled"] = float(len(labelled))  # the last round's transcripts
  stored = {u.id: u.text for u in untranscribed if u.text.strip()}
  scored = [u for u in labelled if u.id in stored]
  if scored:
    refs = [teacher.vocab.decode(teacher.vocab.encode(stored[u.id])) for u in scored]
    metrics[f"{prefix}_pseudo_label_cer"] = asr.error_rates_by_language(
        refs, [u.text for u in scored], [u.lang for u in scored])["all"]["cer"]
  return metrics


def fusion_file(order: int, beam_size: int) -> str:
  """The name of a fine-tuned head's LM fusion weights for an LM order and a beam size."""
  return f"char_lm_{order}gram_beam{beam_size}_fusion.json"


def ctc_language_models(ctx: base.EvalContext | None, corpus_dir: str, tuned: finetune.FinetunedCTC,
                        tune_langs: Sequence[str], order: int, max_tune_per_lang: int = 15,
                        beam_size: int = 8) -> char_lm.LanguageModels | None:
  """Character LMs of the corpus' train text (the text stream's and the paired transcripts', one
  model a language) with their fusion weights tuned for `tuned` on the paired validation utterances
  of `tune_langs` (never a test utterance, never a held-out language's). The weights are saved in
  the head's directory, one file per order and beam (the best weights move with the beam), and read
  back; the models are refit (seconds). None when `order` is 0 or the corpus has no train text."""
  if order <= 0:
    return None
  memo = ("ctc_lm", tuned.directory, order, beam_size, storage.absolute(corpus_dir))
  if ctx is not None and memo in ctx.shared:
    return ctx.shared[memo]
  vocab = tuned.vocab
  sentences = [(u.lang, vocab.encode(u.text)) for stream in ("text", "paired")
               if eval_data.corpus_languages(corpus_dir, stream, "train")
               for u in eval_data.read_utterances(corpus_dir, stream, "train") if u.text.strip()]
  if not sentences:
    logging.warning("%s has no train text: CTC decoding without a character LM", corpus_dir)
    return None
  lms = char_lm.LanguageModels.fit(sentences, order, vocab.vocab_size)
  path = epath.Path(tuned.directory) / fusion_file(order, beam_size) if tuned.directory else None
  if path and path.exists():
    saved = json.loads(path.read_text())
    lms.weight, lms.length_bonus = saved["weight"], saved["length_bonus"]
  else:
    validation = [u for u in eval_data.read_utterances(corpus_dir, "paired", "validation", list(tune_langs),
                                                       max_tune_per_lang) if len(u.audio) and u.text.strip()]
    if validation:
      log_probs = tuned.log_probs([u.audio for u in validation], [u.lang for u in validation])
      rows = [(u.lang, vocab.decode(vocab.encode(u.text)), lp) for u, lp in zip(validation, log_probs)]
      chosen = asr.tune_lm_fusion(lms, rows, vocab, beam_size=beam_size)
      logging.info("Character %d-gram LM fusion tuned on %d validation utterances: %s", order, len(rows), chosen)
      if path:
        path.write_text(json.dumps({**chosen, "order": order, "beam_size": beam_size,
                                    "num_sentences": len(sentences), "num_validation": len(rows)}))
    else:
      logging.warning("no paired validation utterances of %s to tune the LM fusion on: weight %.1f, length "
                      "bonus %.1f", list(tune_langs), lms.weight, lms.length_bonus)
  if ctx is not None:
    ctx.shared[memo] = lms
  return lms


def checkpoint_classifier(ctx: base.EvalContext, name: str, audios: Sequence[np.ndarray], labels: Sequence[str],
                          settings: finetune.FinetuneConfig, key: dict) -> finetune.FinetunedClassifier:
  """A classification head (e.g. language ID) fine-tuned on this checkpoint, cached like the CTC head."""
  examples, classes = finetune.class_examples(audios, labels, settings.max_audio_seconds)
  key = {**key, "task": "classify", "classes": classes, "settings": _settings_dict(settings)}
  model_dir = _head_dir(ctx, name, key)
  def head_init(params):
    # The head standardizes pooled embeddings with statistics of the training clips under the
    # starting encoder, as the linear probe does (a lightly trained encoder's clips differ by a
    # small fraction of their norm), and starts as logistic regression does: every class alike.
    del params
    pooled = eval_data.Encoder(ctx.model, ctx.params, batch_size=settings.batch_size,
                               cache=ctx.compiled).speech(examples.audios)
    dim = pooled.shape[-1]
    return {"kernel": np.zeros((dim, len(classes)), np.float32), "bias": np.zeros((len(classes),), np.float32),
            "mean": pooled.mean(0).astype(np.float32), "inv_std": (1.0 / (pooled.std(0) + 1e-6)).astype(np.float32)}

  source = {"task": "classify", "model_dir": storage.absolute(ctx.model_dir) if ctx.model_dir else None,
            "step": ctx.step, "classes": classes, "settings": _settings_dict(settings)}
  params = _train_in_process(ctx, "classify", examples, len(classes), settings, model_dir, source, head_init)
  return finetune.FinetunedClassifier(ctx.model, params, classes, losses(model_dir), settings.batch_size)


# -- mslam finetune ------------------------------------------------------------------------------------

@gin.configurable
def finetune_run(task: str = "ctc", init_from_dir: str = gin.REQUIRED, model_dir: str = gin.REQUIRED,
                 corpus_dir: str | None = None, step: int | None = None, langs: Sequence[str] | None = None,
                 max_train_per_lang: int | None = None, max_test_per_lang: int | None = 100,
                 beam_size: int = 8, settings: finetune.FinetuneConfig | None = None,
                 model: Any = None, iterator_fn: Callable[..., Any] | None = None,
                 progress_bar: bool = True, tensorboard: bool = True, eval_every: int = 0,
                 evaluators: Sequence[Any] = (), translation_streams: Sequence[str] = ("speech",),
                 xtreme_s: str | None = None, corpora: Mapping[str, str] | None = None, lm_order: int = 6
                 ) -> dict[str, float]:
  """`mslam finetune`: fine-tunes `task` from a checkpoint of `init_from_dir` into `model_dir`, then
  scores the corpus' test split (ctc: CER/WER; classify: language-ID accuracy). A restarted job
  resumes from `model_dir`'s latest checkpoint.

  `xtreme_s` / `corpora`: an XTREME-S benchmark task (e.g. "fleurs_asr") over prepared corpora
  ({"fleurs": DIR, ...}) instead of the built-in corpus: its head comes from the task (`task` is
  ignored), its batches stream from the task's SeqIO Mixture (evaluation/xtreme_s_data.py) and its
  test split (validation without one) is scored with the benchmark's metric.

  `lm_order` (ctc on the built-in corpus): > 0 adds ctc_cer_lm, beam search fused with a character
  n-gram LM of the corpus' train text (ctc_language_models); 0 turns it off.

  `model` / `iterator_fn`: the task model and its batches, for tasks whose data the corpus readers
  here do not make (translate: bound in its run config); default: the task's own.
  `evaluators` / `eval_every`: translate only, e.g. [@TranslationEvaluator()] for BLEU over steps.
  `translation_streams`: ("speech", "text") adds text-to-text batches of the same items' source
  text (the paper's joint speech + text fine-tuning) to speech translation.
  """
  settings = settings or finetune.FinetuneConfig()
  if storage.absolute(model_dir).rstrip("/") == storage.absolute(init_from_dir).rstrip("/"):
    raise ValueError(f"finetune_run.model_dir is the pre-training run {init_from_dir}: give the fine-tuning "
                     "run a directory of its own (--gin.MODEL_DIR)")
  if xtreme_s:
    return _finetune_xtreme_s(xtreme_s, corpora, init_from_dir, model_dir, step, max_test_per_lang, beam_size,
                              settings, model, progress_bar, tensorboard, eval_every, evaluators)
  if corpora:
    raise ValueError("finetune_run.corpora is set without finetune_run.xtreme_s: pass --xtreme_s TASK "
                     "(the benchmark task to fine-tune on them)")
  base_model = config_lib.build_model()
  chosen = checkpoints.select_steps(init_from_dir, "latest" if step is None else step)[-1]
  pretrained = lambda: checkpoints.load_params(checkpoints.step_dir(init_from_dir, chosen))
  source = {"task": task, "model_dir": storage.absolute(init_from_dir), "step": chosen,
            "corpus_dir": storage.absolute(corpus_dir) if corpus_dir else None, "settings": _settings_dict(settings)}
  if iterator_fn is not None:  # a task whose batches its run config makes
    task_model = model if model is not None else finetune.task_model(task)()
    _write_source(model_dir, source)
    summary = train_task(task_model, iterator_fn, model_dir, settings, pretrained, progress_bar=progress_bar,
                         tensorboard=tensorboard)
    return {"final_step": float(summary["final_step"])}
  if not corpus_dir:
    raise ValueError("finetune_run.corpus_dir is unset: pass --corpus_dir (or the run's CORPUS_DIR)")
  if task == "ctc":
    langs = list(langs or eval_data.training_languages(corpus_dir))
    vocab = eval_data.load_vocabulary(corpus_dir)
    examples = _ctc_examples(corpus_dir, langs, max_train_per_lang, vocab, settings)
    num_classes, classes = vocab.vocab_size, None
    head_init = lambda params: finetune.pretrained_head(  # pylint: disable=g-long-lambda
        params["encoder"], settings.pretrained_head, finetune._embed_dim(base_model, params["encoder"]),  # pylint: disable=protected-access
        vocab.vocab_size, base_model, settings.ctc_upsample)
  elif task == "classify":
    train = [u for u in eval_data.read_utterances(corpus_dir, "speech", "train", langs, max_train_per_lang) if len(u.audio)]
    examples, classes = finetune.class_examples([u.audio for u in train], [u.lang for u in train],
                                                settings.max_audio_seconds)
    num_classes, head_init, vocab = len(classes), None, None
  elif task == "translate":
    return _finetune_translation(init_from_dir, model_dir, corpus_dir, langs, max_train_per_lang, settings, model,
                                 pretrained, source, progress_bar, tensorboard, eval_every, evaluators,
                                 translation_streams)
  else:
    raise ValueError(f"--task {task} needs its data: bind finetune_run.iterator_fn in its run config")
  _write_source(model_dir, {**source, "langs": langs, "classes": classes, "num_classes": num_classes}, vocab)
  task_model = model if model is not None else finetune.head_task(task, base_model, num_classes, settings)
  iterator_fn = finetune.example_batches(examples, task, settings)
  summary = train_task(task_model, iterator_fn, model_dir, settings, pretrained, head_init,
                       progress_bar=progress_bar, tensorboard=tensorboard)
  if summary["stopped"] != "done":
    return {"final_step": float(summary["final_step"])}
  params = checkpoints.load_params(checkpoints.step_dir(model_dir, summary["final_step"]))
  curve = losses(model_dir)
  if task == "ctc":
    tuned = finetune.FinetunedCTC(base_model, params, vocab, curve, settings.batch_size, model_dir)
    test = eval_data.read_utterances(corpus_dir, "paired", "test", langs, max_test_per_lang)
    lms = ctc_language_models(None, corpus_dir, tuned, langs, lm_order, beam_size=beam_size)
    metrics = finetune.ctc_metrics(tuned, test, "ctc", beam_size, lms)
    finetune._plot_losses(os.path.join(model_dir, "ctc_finetune_loss.png"), curve,  # pylint: disable=protected-access
                          f"CTC fine-tuning ({settings.freeze}) from step {chosen}")
  else:
    tuned = finetune.FinetunedClassifier(base_model, params, classes, curve, settings.batch_size)
    test = [u for u in eval_data.read_utterances(corpus_dir, "speech", "test", langs, max_test_per_lang) if len(u.audio)]
    predicted = tuned.predict([u.audio for u in test])
    metrics = {"classify_accuracy": float(np.mean(np.array(predicted) == np.array([u.lang for u in test])))}
  metrics["final_step"] = float(summary["final_step"])
  report.write_checkpoint_report(model_dir, chosen, metrics, checkpoints.step_dir(init_from_dir, chosen))
  return metrics


def _finetune_translation(init_from_dir, model_dir, corpus_dir, langs, max_train_per_lang, settings, model,
                          pretrained, source, progress_bar, tensorboard, eval_every=0,
                          evaluators=(), streams=("speech",)) -> dict[str, float]:
  """X -> English speech translation on the corpus' built-in translation data (data/translation.py),
  with the model registered for "translate" (models/translation.py). The `translation` evaluator
  scores the result (BLEU, chrF)."""
  del init_from_dir
  if set(streams) - {"speech", "text"} or "speech" not in streams:
    raise ValueError(f"finetune_run.translation_streams must be ('speech',) or ('speech', 'text'), got {streams}")
  if translation_data.read_manifest(corpus_dir) is None:  # derived from the corpus: made once, here
    logging.info("Building the built-in translation data of %s", corpus_dir)
    translation_data.build_translation_data(corpus_dir, progress=progress_bar)
  items = [x for x in translation_data.read_items(corpus_dir, "train", langs, max_train_per_lang) if len(x.audio)]
  if not items:
    raise ValueError(f"no translation training items with audio in {corpus_dir}")
  vocab = eval_data.load_vocabulary(corpus_dir)
  max_samples = int(settings.max_audio_seconds * eval_data.SAMPLE_RATE)
  audio_samples = min(max_samples, -(-max(len(x.audio) for x in items) // eval_data.SAMPLE_RATE) * eval_data.SAMPLE_RATE)
  target_length = -(-max(len(vocab.encode(x.target)) + 1 for x in items) // 32) * 32
  text_length = -(-max(len(vocab.encode(x.text)) for x in items) // 32) * 32
  bounds, groups = finetune.length_buckets([len(x.audio) for x in items], settings.length_buckets, audio_samples)
  make = lambda idx: {  # pylint: disable=g-long-lambda
      stream: translation_data.make_batch([items[i] for i in idx], vocab, stream, target_length,
                                          finetune.padded_length(bounds, max(len(items[i].audio) for i in idx)),
                                          text_length)
      for stream in streams}
  task_model = model if model is not None else finetune.task_model("translate")()
  _write_source(model_dir, {**source, "target_length": target_length, "audio_samples": audio_samples,
                            "streams": list(streams)}, vocab)
  iterator_fn = functools.partial(finetune.ExampleBatches, len(items), make, settings.batch_size, settings.seed,
                                  groups=groups)
  summary = train_task(task_model, iterator_fn, model_dir, settings, pretrained, progress_bar=progress_bar,
                       tensorboard=tensorboard, eval_every=eval_every, evaluators=evaluators, corpus_dir=corpus_dir)
  final_step = summary["final_step"]
  if summary["stopped"] != "done":
    return {"final_step": float(final_step)}
  # The test split's BLEU/chrF of the final checkpoint, unless the periodic evaluation scored it.
  evaluator = translation_eval.TranslationEvaluator(corpus_dir=corpus_dir, streams=streams)
  out_dir = base.step_eval_dir(model_dir, final_step)
  metrics = report.read_checkpoint_metrics(out_dir, [evaluator.name])
  if metrics is None:
    ctx = base.EvalContext(model=task_model, step=final_step, model_dir=model_dir, corpus_dir=corpus_dir,
                           params=checkpoints.load_params(checkpoints.step_dir(model_dir, final_step)),
                           out_dir=out_dir)
    metrics = runner.evaluate_checkpoint([evaluator], ctx, checkpoints.step_dir(model_dir, final_step)).metrics
  return {**metrics, "final_step": float(final_step)}


def _finetune_xtreme_s(benchmark, corpora, init_from_dir, model_dir, step, max_test_per_lang, beam_size, settings,
                       model, progress_bar, tensorboard, eval_every, evaluators) -> dict[str, float]:
  """An XTREME-S benchmark task (tasks/xtreme_s.py): the head its target needs, trained on batches
  streamed from its Mixture's train split, then its test split scored with its metric, per
  language and overall ({task}_cer / _wer, {task}_accuracy, {task}_bleu / _chrf)."""
  spec = xtreme_s_data.benchmark_spec(benchmark, corpora)  # bad input stops here, before any compile
  name, kind = xtreme_s_data.task_name(benchmark), xtreme_s_data.head(spec)
  data = xtreme_s_data.XtremeSData()
  langs = xtreme_s_data.register(name, corpora, data)
  vocab = xtreme_s_data.vocabulary(name, corpora)
  classes = xtreme_s_data.classes(name, corpora) if kind == "classify" else None
  base_model = config_lib.build_model()
  if kind == "translate":
    task_model = model if model is not None else finetune.task_model("translate")()
    if vocab.vocab_size > task_model.decoder.vocab_size:
      raise ValueError(f"XTREME-S {name}'s vocabulary has {vocab.vocab_size} ids, more than the decoder's "
                       f"{task_model.decoder.vocab_size} (the pre-trained model's VOCAB_SIZE)")
  else:
    task_model = model if model is not None else finetune.head_task(
        kind, base_model, vocab.vocab_size if kind == "ctc" else len(classes), settings)
  chosen = checkpoints.select_steps(init_from_dir, "latest" if step is None else step)[-1]
  pretrained = lambda: checkpoints.load_params(checkpoints.step_dir(init_from_dir, chosen))
  audio_samples = int(settings.max_audio_seconds * eval_data.SAMPLE_RATE)
  _write_source(model_dir, {
      "task": kind, "xtreme_s": name, "metric": spec.metric, "model_dir": storage.absolute(init_from_dir),
      "step": chosen, "corpora": {k: storage.absolute(str(v)) for k, v in sorted(corpora.items())}, "langs": langs,
      "classes": classes, "audio_samples": audio_samples, "target_length": data.target_length,
      "settings": _settings_dict(settings)}, vocab)
  # The CTC head starts fresh: a pre-trained CTC head's ids are those of the pre-training vocabulary.
  iterator_fn = functools.partial(xtreme_s_data.step_iterator, name, corpora, settings.batch_size, audio_samples,
                                  seed=settings.seed, classes=classes, data=data)
  summary = train_task(task_model, iterator_fn, model_dir, settings, pretrained, progress_bar=progress_bar,
                       tensorboard=tensorboard, eval_every=eval_every, evaluators=evaluators)
  if summary["stopped"] != "done":
    return {"final_step": float(summary["final_step"])}
  params = checkpoints.load_params(checkpoints.step_dir(model_dir, summary["final_step"]))
  # The scoring split streams through in chunks: only texts and labels are kept.
  split = xtreme_s_data.eval_split(name)
  test = xtreme_s_data.iter_examples(name, corpora, split, max_test_per_lang)
  curve = losses(model_dir)
  if kind == "ctc":
    tuned = finetune.FinetunedCTC(base_model, params, vocab, curve, settings.batch_size)
    metrics = finetune.ctc_metrics(tuned, test, name, beam_size)
  elif kind == "classify":
    classifier = finetune.FinetunedClassifier(base_model, params, classes, curve, settings.batch_size)
    right, langs_of = [], []
    for chunk in xtreme_s_data.chunks(test, 16 * settings.batch_size):
      right += [p == x.label for p, x in zip(classifier.predict([x.audio for x in chunk]), chunk)]
      langs_of += [x.lang for x in chunk]
    if not right:
      raise ValueError(f"XTREME-S {name}: no {split} examples to score")
    right, langs_of = np.array(right), np.array(langs_of)
    metrics = {f"{name}_accuracy": float(np.mean(right)), f"{name}_num_test": float(len(right))}
    metrics.update({f"{name}_accuracy/{lang}": float(np.mean(right[langs_of == lang])) for lang in sorted(set(langs_of))})
  else:
    items, hypotheses = [], []
    for chunk in xtreme_s_data.chunks(test, 16 * settings.batch_size):
      chunk = [translation_data.Item(x.id, x.lang, "", "", x.text, x.audio) for x in chunk]
      hypotheses += translation_eval.translate_items(task_model, params, chunk, vocab, "speech", settings.batch_size)
      items += [dataclasses.replace(x, audio=np.zeros([0], np.float32)) for x in chunk]  # texts only from here
    if not items:
      raise ValueError(f"XTREME-S {name}: no {split} examples to score")
    # The trivial baseline answers the commonest translation of the train records (the first 1,000 of each language).
    baseline = translation_eval.most_frequent_target(
        [translation_data.Item("", "", "", "", t) for t in xtreme_s_data.train_labels(name, spec.target, 1000) if t])
    metrics = translation_eval.score_groups(items, hypotheses, (), baseline, prefix=name)
    metrics[f"{name}_num_test"] = float(len(items))
    rows = [{"id": x.id, "lang": x.lang, "reference": x.target, "hypothesis": h} for x, h in zip(items, hypotheses)]
    storage.write_text(os.path.join(model_dir, "translations.jsonl"),
                       "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
  metrics = {**metrics, "final_step": float(summary["final_step"])}
  logging.info("XTREME-S %s (%s, %s split): %s", name, spec.metric, split,
               {k: v for k, v in metrics.items() if "/" not in k})
  report.write_checkpoint_report(model_dir, chosen, metrics, checkpoints.step_dir(init_from_dir, chosen))
  return metrics


def load_finetuned(directory: str) -> finetune.FinetunedCTC:
  """A CTC fine-tuning directory -> FinetunedCTC (the model rebuilt from its source run's config),
  for the commands: a few clips are decoded in a batch of their size (`fit_small_calls`).

  Replaces the process' gin config by the source run's.
  """
  source_path = epath.Path(directory) / SOURCE_FILE
  if not source_path.exists():
    raise FileNotFoundError(f"{directory} is not a fine-tuned CTC model (no {SOURCE_FILE}); make one with "
                            "`mslam finetune --task ctc --init_from RUN --gin.MODEL_DIR=DIR`")
  source = json.loads(source_path.read_text())
  if source.get("task", "ctc") != "ctc":
    raise ValueError(f"{directory} holds a {source['task']!r} head, not a CTC one")
  params = finished_params(directory, 1)
  if params is None:
    raise FileNotFoundError(f"{directory} has no finished fine-tuning checkpoint")
  config_lib.parse_run_config(source["model_dir"])
  model = config_lib.build_model()
  return finetune.FinetunedCTC(model, params, eval_data.load_vocabulary(directory), directory=directory,
                               langs=tuple(source.get("langs") or ()), fit_small_calls=True)

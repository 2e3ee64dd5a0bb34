//! The models kira runs in process, from the models directory that
//! `scripts/install-models` fills (`$KIRA_MODELS`, else
//! `~/.cache/kira/models`). Nothing is downloaded at run time: a missing
//! model is reported once, with how to install it, and kira runs without it.

use std::sync::Arc;

use kira_engine::Engine;

/// The engine with the embedding model, if it is installed.
pub fn with_models(engine: Engine) -> Engine {
    let dir = kira_embed::model_dir(&kira_embed::models_dir());
    match kira_embed::Embedder::load(&dir) {
        Ok(e) => {
            tracing::info!(model = e.model_id(), dir = %dir.display(), "semantic memory search on");
            engine.with_embedder(Arc::new(e))
        }
        Err(e) => {
            tracing::warn!("semantic memory search off, full text only: {e}");
            engine
        }
    }
}

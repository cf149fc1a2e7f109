//! The frameworks this server enables, from its options: `local` always, `engine` and
//! `kubernetes` when configured. Those two are cargo features (`engine`, `kubernetes`, on by
//! default): this is the one place of the server that names them, and a server built without
//! one refuses the options that ask for it.

use crate::controller::Frameworks;
use crate::options::ServerOptions;
use crate::secrets::SecretKey;
use crate::ServerError;
use runplane_frameworks::local::{LocalFramework, LocalOptions};
use runplane_frameworks::uploads::OutputsUploads;
use runplane_frameworks::EventSender;
use std::sync::Arc;

/// What [`enable`] made.
pub(crate) struct Enabled {
    pub frameworks: Frameworks,
    /// The framework that takes outputs uploads, when one is enabled.
    pub outputs_uploads: Option<Arc<dyn OutputsUploads>>,
}

/// Makes every framework the options enable, each reporting on `events`.
pub(crate) async fn enable(
    options: &ServerOptions,
    shared_runs_dir: bool,
    secret_key: &SecretKey,
    events: EventSender,
) -> Result<Enabled, ServerError> {
    let local = LocalFramework::new(
        LocalOptions {
            runs_dir: options.runs_dir(),
            logs_dir: options.logs_dir(),
            supervisor: options.supervisor.clone(),
            shared_runs_dir,
        },
        events.clone(),
    );
    let mut enabled = Enabled {
        frameworks: Frameworks::default().with(Arc::new(local)),
        outputs_uploads: None,
    };
    if let Some(settings) = &options.engine {
        engine::enable(&mut enabled, options, settings, events.clone()).await?;
    }
    if let Some(settings) = &options.kubernetes {
        kubernetes::enable(&mut enabled, options, settings, secret_key, events).await?;
    }
    Ok(enabled)
}

#[cfg(feature = "engine")]
mod engine {
    use super::Enabled;
    use crate::options::{EngineSettings, ServerOptions};
    use crate::ServerError;
    use runplane_frameworks::engine::{EngineFramework, EngineOptions};
    use runplane_frameworks::EventSender;
    use std::sync::Arc;

    pub(super) async fn enable(
        enabled: &mut Enabled,
        options: &ServerOptions,
        engine: &EngineSettings,
        events: EventSender,
    ) -> Result<(), ServerError> {
        let engine = EngineFramework::connect(
            EngineOptions {
                socket: engine.socket.clone(),
                runs_dir: options.engine_runs_dir(),
                logs_dir: options.logs_dir(),
                default_image: engine.image.clone(),
            },
            events,
        )
        .await
        .map_err(ServerError::Engine)?;
        let frameworks = std::mem::take(&mut enabled.frameworks);
        enabled.frameworks = frameworks.with(Arc::new(engine));
        Ok(())
    }
}

#[cfg(not(feature = "engine"))]
mod engine {
    use super::Enabled;
    use crate::options::{EngineSettings, ServerOptions};
    use crate::ServerError;
    use runplane_frameworks::EventSender;

    pub(super) async fn enable(
        _: &mut Enabled,
        _: &ServerOptions,
        _: &EngineSettings,
        _: EventSender,
    ) -> Result<(), ServerError> {
        Err(ServerError::NotBuilt("engine"))
    }
}

#[cfg(feature = "kubernetes")]
mod kubernetes {
    use super::Enabled;
    use crate::options::{KubernetesOptions, ServerOptions};
    use crate::secrets::SecretKey;
    use crate::ServerError;
    use runplane_frameworks::kubernetes::profiles::Profiles;
    use runplane_frameworks::kubernetes::{BuildSettings, KubernetesFramework, KubernetesSettings};
    use runplane_frameworks::EventSender;
    use std::sync::Arc;

    pub(super) async fn enable(
        enabled: &mut Enabled,
        options: &ServerOptions,
        kube: &KubernetesOptions,
        secret_key: &SecretKey,
        events: EventSender,
    ) -> Result<(), ServerError> {
        let framework = Arc::new(
            KubernetesFramework::connect(settings(options, kube, secret_key)?, events)
                .await
                .map_err(ServerError::Kubernetes)?,
        );
        let frameworks = std::mem::take(&mut enabled.frameworks);
        enabled.frameworks = frameworks.with(framework.clone());
        enabled.outputs_uploads = Some(framework);
        Ok(())
    }

    /// The kubernetes framework's settings from the server's options.
    fn settings(
        options: &ServerOptions,
        kube: &KubernetesOptions,
        secret_key: &SecretKey,
    ) -> Result<KubernetesSettings, ServerError> {
        let mut settings = KubernetesSettings::new(
            &kube.namespace,
            options
                .shared_dir
                .as_ref()
                .unwrap_or(&options.home)
                .join("kubernetes"),
            options.logs_dir(),
        );
        settings.default_image = kube.image.clone();
        settings.instance = kube.instance.clone();
        settings.outputs_url = kube.outputs_url.clone();
        settings.kubeconfig = kube.kubeconfig.clone();
        settings.token_key = secret_key.derive("kubernetes outputs tokens");
        if let Some(path) = &kube.profiles_file {
            let bad = |message: String| ServerError::KubernetesProfiles {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            settings.profiles = Profiles::from_yaml(&text).map_err(|e| bad(e.to_string()))?;
        }
        if let (Some(kaniko), Some(registry)) = (&kube.kaniko_image, &kube.registry) {
            settings.build = Some(BuildSettings {
                registry: registry.clone(),
                kaniko_image: kaniko.clone(),
                insecure: false,
                push_secret: None,
            });
        }
        Ok(settings)
    }
}

#[cfg(not(feature = "kubernetes"))]
mod kubernetes {
    use super::Enabled;
    use crate::options::{KubernetesOptions, ServerOptions};
    use crate::secrets::SecretKey;
    use crate::ServerError;
    use runplane_frameworks::EventSender;

    pub(super) async fn enable(
        _: &mut Enabled,
        _: &ServerOptions,
        _: &KubernetesOptions,
        _: &SecretKey,
        _: EventSender,
    ) -> Result<(), ServerError> {
        Err(ServerError::NotBuilt("kubernetes"))
    }
}

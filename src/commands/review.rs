//! `vigil review`: the review store in PostgreSQL (`docs/design/review.md`).
//! `migrate` brings the schema up to date; `ingest` follows the pipeline's
//! decisions topic and turns every `review` decision into a case.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Subcommand;
use vigil_review::{
    CaseEntity, Follow, HoldAction, LabelSink, ReviewSettings, ReviewStore, Role, StoreLabels, TopicLabels,
    WebhookSender,
};

use super::load_pipeline;

/// Where the review store lives.
#[derive(clap::Args)]
pub struct Database {
    /// The review database: a `postgresql://` URL or `key=value` settings
    /// (`host=127.0.0.1 user=postgres dbname=vigil`); the pipeline's
    /// `[review] database` when not given.
    #[arg(long, env = "VIGIL_REVIEW_DATABASE")]
    database: Option<String>,
}

impl Database {
    /// The database given, else the pipeline's.
    fn or_pipeline(self, config: Option<&vigil_core::PipelineConfig>) -> anyhow::Result<String> {
        self.database.or_else(|| config.and_then(|c| c.review.database.clone())).ok_or_else(|| {
            anyhow!("no review database: give --database, set VIGIL_REVIEW_DATABASE, or set [review] database in the pipeline")
        })
    }
}

/// The review database of a one-off command: given, or the pipeline's.
#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    database: Database,
    /// A pipeline whose `[review] database` names the database.
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

impl StoreArgs {
    /// A one-connection store on the database.
    fn connect(self) -> anyhow::Result<ReviewStore> {
        let config = self.pipeline.as_deref().map(load_pipeline).transpose()?;
        let database = self.database.or_pipeline(config.as_ref())?;
        Ok(ReviewStore::connect(&database, 1, ReviewSettings::default())?)
    }
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit log's hash chain: exit 0 when every row fits, 1
    /// with the first row that does not (changed, removed, or a cut tail).
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account; the password comes from an environment variable,
    /// never from the command line (where `ps` shows it).
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// The user name: lower-case letters, digits, `.`, `_` or `-`.
        #[arg(long)]
        name: String,
        /// analyst, lead or admin.
        #[arg(long, default_value = "analyst")]
        role: String,
        /// The variable that holds the password (12 characters or more).
        #[arg(long)]
        password_env: String,
    },
    /// Disable an account and end its sessions.
    Disable {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
pub enum Command {
    /// Analysts' accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The audit log of analysts' actions.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Create or update the review store's tables; safe to run again.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Follow the decisions topic: every `review` decision opens a case or
    /// joins its entity's open case, once however often it is delivered.
    /// Stops on SIGINT or SIGTERM. With `--decisions FILE`, ingests that
    /// file instead and exits.
    Ingest {
        #[command(flatten)]
        args: IngestArgs,
        /// A JSON-lines file of decision records (an archive of the decisions
        /// topic, or the file `vigil demo` writes): its `review`
        /// decisions are ingested like the topic's, once however often the
        /// file is given, and the command exits.
        #[arg(long)]
        decisions: Option<PathBuf>,
    },
    /// The review server: the analysts' REST API (`/api/v1/review/`, see
    /// docs/review-openapi.yaml), and everything `ingest` does (unless
    /// `--no-follow`). Stops on SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        ingest: IngestArgs,
        /// The address to serve on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Serve the API (and resolve holds that run out, and publish
        /// resolutions) without following the decisions topic: another
        /// instance or `vigil review ingest` does.
        #[arg(long)]
        no_follow: bool,
        /// How long a login lasts (`8h`, `30m`).
        #[arg(long, default_value = "8h")]
        session: String,
        /// Leave `Secure` off the session cookie: only for plain HTTP on a
        /// host other than localhost, in a test network. Browsers send a
        /// `Secure` cookie over HTTPS, and to localhost over plain HTTP.
        #[arg(long)]
        insecure_cookie: bool,
    },
}

/// What the review store follows and how.
#[derive(clap::Args)]
pub struct IngestArgs {
    /// The pipeline config whose `[kafka]` names the brokers and the
    /// decisions topic, and whose `[review]` section the settings.
    #[arg(long)]
    pipeline: PathBuf,
    #[command(flatten)]
    database: Database,
    /// The consumer group; `<group_id>-review` by default, so that the
    /// review store reads every decision beside the pipeline's own group.
    #[arg(long)]
    group: Option<String>,
    /// The entity that owns a case: card, account, customer, merchant,
    /// terminal or device; `[review] entity` (card) when not given.
    #[arg(long)]
    entity: Option<String>,
    /// How long a payment under review is held (`30m`, `2h`), from when
    /// the review store receives it; `[review] hold` (30m) when not given.
    #[arg(long)]
    hold: Option<String>,
    /// What happens to a payment whose hold runs out before a verdict:
    /// `release` (capture it) or `stop` (void it); `[review]
    /// on_deadline` (release) when not given. Checked every second; the
    /// resolution is written to the outbox like an analyst's.
    #[arg(long)]
    on_deadline: Option<String>,
    /// Publish each resolution once to this topic (keyed by transaction
    /// id), for the ledger or payment service to capture or void;
    /// `[review] resolutions_topic` when not given. Without either,
    /// resolutions wait in the database's outbox. (Analysts' verdicts go as
    /// labels to the pipeline's labels topic, or without one to its Redis
    /// feature store, with or without this topic.)
    #[arg(long)]
    resolutions_topic: Option<String>,
    /// Most decisions per batch (one database transaction each).
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

/// The review store and its loops, ready to start.
struct Review {
    store: ReviewStore,
    /// The brokers, when the pipeline has them.
    kafka: Option<vigil_core::pipeline::KafkaConfig>,
    group: String,
    batch: usize,
    on_deadline: HoldAction,
    resolutions_topic: Option<String>,
    /// Where analysts' verdicts go as labels; none when the pipeline has
    /// neither a labels topic nor a feature store that outlives a process.
    labels: Option<Box<dyn LabelSink>>,
    /// The `[[review.webhooks]]` receivers, with their secrets.
    webhooks: Option<WebhookSender>,
    /// `[review.oidc]`, for the server's logins.
    oidc: Option<vigil_core::pipeline::OidcConfig>,
}

impl IngestArgs {
    /// Reads the settings and readies the database; the brokers are needed
    /// to `follow` the decisions topic and to publish resolutions. `loops`:
    /// the review loops will run (resolving holds, publishing, sending
    /// labels), so their sinks are connected too.
    async fn prepare(self, follow: bool, loops: bool) -> anyhow::Result<Review> {
        let config = load_pipeline(&self.pipeline)?;
        let kafka = config.kafka.clone();
        let database = self.database.or_pipeline(Some(&config))?;
        let mut settings = ReviewSettings::from_pipeline(&config)?;
        if let Some(entity) = self.entity {
            settings.entity = CaseEntity::parse(&entity).ok_or_else(|| {
                let known: Vec<&str> = CaseEntity::ALL.iter().map(|e| e.as_str()).collect();
                anyhow!("--entity {entity}: not an entity (known: {})", known.join(", "))
            })?;
        }
        if let Some(hold) = self.hold {
            settings.hold = vigil_core::feature::parse_duration_s(&hold)
                .map_err(|m| anyhow!("--hold {hold}: {m}"))
                .map(Duration::from_secs)?;
        }
        if let Some(on_deadline) = self.on_deadline {
            settings.on_deadline = HoldAction::parse(&on_deadline)
                .ok_or_else(|| anyhow!("--on-deadline {on_deadline}: give release or stop"))?;
        }
        let on_deadline = settings.on_deadline;
        let resolutions_topic = self.resolutions_topic.or_else(|| config.review.resolutions_topic.clone());
        if follow || resolutions_topic.is_some() {
            let kafka = vigil_kafka::settings(&config).with_context(|| {
                format!(
                    "{}: following the decisions topic and publishing resolutions need the brokers",
                    self.pipeline.display()
                )
            })?;
            if let Some(topic) = &resolutions_topic {
                vigil_review::check_resolutions_topic(kafka, topic)?;
            }
        }
        let labels = if loops { label_sink(&config).await? } else { None };
        let webhooks = if loops && !config.review.webhooks.is_empty() {
            let sender = WebhookSender::new(&config.review.webhooks, |var| std::env::var(var).ok())
                .with_context(|| format!("{}: [[review.webhooks]]", self.pipeline.display()))?;
            Some(sender)
        } else {
            None
        };
        let store = ReviewStore::connect(&database, 8, settings)?;
        store.migrate().await.context("preparing the review database")?;
        let group = self.group.unwrap_or_else(|| format!("{}-review", kafka.as_ref().map_or("vigil", |k| &k.group_id)));
        let oidc = config.review.oidc.clone();
        Ok(Review { store, kafka, group, batch: self.batch, on_deadline, resolutions_topic, labels, webhooks, oidc })
    }
}

/// Where analysts' verdicts go as labels: the pipeline's labels topic, else
/// its feature store (Redis), so that the next decision's label features
/// count them. An in-memory store belongs to another process: the verdicts
/// then wait in the review database, said once at start.
async fn label_sink(config: &vigil_core::PipelineConfig) -> anyhow::Result<Option<Box<dyn LabelSink>>> {
    if let Some((kafka, topic)) = config.kafka.as_ref().and_then(|k| k.labels_topic.as_ref().map(|t| (k, t))) {
        vigil_review::check_resolutions_topic(kafka, topic)
            .with_context(|| format!("{}: verdicts go to the labels topic", config.file.display()))?;
        return Ok(Some(Box::new(TopicLabels::new(kafka, topic)?)));
    }
    if matches!(config.store.backend, vigil_core::pipeline::StoreBackend::Memory) {
        tracing::warn!(
            pipeline = %config.file.display(),
            "no labels topic and an in-memory feature store: analysts' verdicts stay in the review database \
             (resolutions.verdict) and reach no label feature; set [kafka] labels_topic or a Redis store"
        );
        return Ok(None);
    }
    vigil_features::refuse_owned(&config.store, "the review server, with no labels topic,")
        .with_context(|| config.file.display().to_string())?;
    let plan = vigil_features::Plan::new(config.features.clone());
    let store = vigil_features::connect(&config.store, plan)
        .await
        .with_context(|| format!("{}: verdicts go to the feature store", config.file.display()))?;
    Ok(Some(Box::new(StoreLabels::new(store, "the feature store"))))
}

/// Completes once `stop` says so (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Review {
    /// Resolves holds that run out and publishes resolutions (when there is a
    /// topic) until `stop`, and follows the decisions topic too when `follow`.
    async fn run(self, follow: bool, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let Review { store, kafka, group, batch, on_deadline, resolutions_topic, labels, webhooks, oidc: _ } = self;
        let sweeper = tokio::spawn(resolve_due_every_second(store.clone(), on_deadline));
        let publisher = resolutions_topic.zip(kafka.clone()).map(|(topic, kafka)| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move { store.publish(&kafka, &topic, 500, stopped(stop)).await })
        });
        let labeller = labels.map(|sink| {
            let (store, stop) = (store.clone(), stop.clone());
            tracing::info!(to = %sink.describe(), "analysts' verdicts go out as labels");
            tokio::spawn(async move { store.send_labels(sink.as_ref(), 500, stopped(stop)).await })
        });
        let hooks = webhooks.map(|sender| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move { store.deliver_webhooks(&sender, stopped(stop)).await })
        });
        let result = if let Some(kafka) = kafka.filter(|_| follow) {
            tracing::info!(topic = %kafka.decisions_topic, %group, "following decisions into the review store");
            store.follow(Follow { kafka: &kafka, group, batch }, stopped(stop.clone())).await.map(|totals| {
                let t = totals.ingested;
                tracing::info!(
                    records = totals.records,
                    payments_added = t.added,
                    cases_opened = t.opened,
                    repeated = t.repeated,
                    without_event = t.without_event,
                    unreadable = totals.unreadable,
                    retried_batches = totals.retried,
                    "review ingest stopped"
                );
            })
        } else {
            stopped(stop.clone()).await;
            Ok(())
        };
        sweeper.abort();
        if let Some(p) = publisher {
            let published = p.await.context("the resolutions publisher")??;
            tracing::info!(sent = published.sent, found_sent = published.found_sent, "resolutions publisher stopped");
        }
        if let Some(l) = labeller {
            let sent = l.await.context("the label sender")??;
            tracing::info!(sent, "verdict labels sender stopped");
        }
        if let Some(h) = hooks {
            let delivered = h.await.context("the webhook sender")??;
            tracing::info!(delivered, "webhook sender stopped");
        }
        Ok(result?)
    }
}

/// A stop signal that turns true on SIGINT or SIGTERM.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::signals::shutdown().await;
        let _ = tx.send(true);
    });
    rx
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::User { command } => user(command).await,
        Command::Audit { command: AuditCommand::Verify { store } } => {
            let store = store.connect()?;
            let check = store.verify_audit(10_000).await?;
            match check.broken {
                None => {
                    println!("audit chain holds: {} rows", check.good);
                    Ok(())
                }
                Some((row, why)) => {
                    anyhow::bail!("audit chain broken at row {row}: {why} ({} rows before it hold)", check.good)
                }
            }
        }
        Command::Migrate { store } => {
            let store = store.connect()?;
            store.migrate().await?;
            println!("review database is up to date");
            Ok(())
        }
        Command::Ingest { args, decisions: Some(file) } => {
            let review = args.prepare(false, false).await?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut batch = Vec::new();
            let mut total = vigil_review::Ingested::default();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let d: vigil_core::Decision = serde_json::from_str(line)
                    .map_err(|e| anyhow!("{}:{}:{}: not a decision record: {e}", file.display(), i + 1, e.column()))?;
                batch.push(d);
                if batch.len() == 500 {
                    total += review.store.ingest(&batch).await?;
                    batch.clear();
                }
            }
            total += review.store.ingest(&batch).await?;
            println!(
                "{}: {} payments added to {} new cases; {} already there; {} review decisions without their event",
                file.display(),
                total.added,
                total.opened,
                total.repeated,
                total.without_event
            );
            Ok(())
        }
        Command::Ingest { args, decisions: None } => args.prepare(true, true).await?.run(true, stop_on_signal()).await,
        Command::Serve { ingest, listen, no_follow, session, insecure_cookie } => {
            let session_ttl = vigil_core::feature::parse_duration_s(&session)
                .map_err(|m| anyhow!("--session {session}: {m}"))
                .map(Duration::from_secs)?;
            let review = ingest.prepare(!no_follow, true).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("--listen {listen}: cannot listen there"))?;
            let oidc = match &review.oidc {
                Some(config) => {
                    let secret = std::env::var(&config.client_secret_env).map_err(|_| {
                        anyhow!("[review.oidc] client_secret_env: the variable {} is not set", config.client_secret_env)
                    })?;
                    let oidc = vigil_review_web::oidc::Oidc::discover(config, secret)
                        .await
                        .map_err(|e| anyhow!("[review.oidc]: {e}"))?;
                    tracing::info!(issuer = %config.issuer, "single sign-on through the identity provider");
                    Some(oidc)
                }
                None => None,
            };
            let mut web = vigil_review_web::Web::new(review.store.clone(), session_ttl);
            web.secure_cookie = !insecure_cookie;
            web.oidc = oidc;
            let web = std::sync::Arc::new(web);
            let stop = stop_on_signal();
            let server = tokio::spawn(vigil_review_web::serve(web, listener, stopped(stop.clone())));
            let loops = review.run(!no_follow, stop).await;
            server.await.context("the review server")?.context("the review server")?;
            loops
        }
    }
}

/// Who account changes from the command line are recorded as.
const CLI: &str = "cli";

async fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { store, name, role, password_env } => {
            let store = store.connect()?;
            let role = Role::parse(&role).ok_or_else(|| anyhow!("--role {role}: give analyst, lead or admin"))?;
            let password = std::env::var(&password_env)
                .map_err(|_| anyhow!("--password-env {password_env}: the variable is not set"))?;
            store.migrate().await.context("preparing the review database")?;
            store.add_user(CLI, &name, role, &password).await?;
            println!("added {} `{name}`", role.as_str());
            Ok(())
        }
        UserCommand::Disable { store, name } => {
            let store = store.connect()?;
            store.disable_user(CLI, &name).await?;
            println!("disabled `{name}`; its sessions are ended");
            Ok(())
        }
    }
}

/// Resolves the payments whose hold ran out, by `action`, every second; a
/// database error is logged and the next second tries again.
async fn resolve_due_every_second(store: ReviewStore, action: HoldAction) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        loop {
            match store.resolve_due(action, 500).await {
                Ok(done) if done.is_empty() => break,
                Ok(done) => {
                    let closed = done.iter().filter(|r| r.case_closed).count();
                    tracing::info!(
                        resolved = done.len(),
                        cases_closed = closed,
                        action = action.as_str(),
                        "holds ran out"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "resolving payments past their hold failed; trying again");
                    break;
                }
            }
        }
    }
}

//! `rollq backfill`, `rollq queue send|create|stats` and `rollq poison list|requeue`:
//! producer and operator tools for the queue the workers consume.
//!
//! Every message these tools send never expires (the `Queue::send` contract), and requeue
//! sends before it deletes, so a crash leaves a duplicate, never a loss.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::aggregate::ReducerArgs;
use crate::cli::common::{connected, explained, runtime};
use crate::cli::submit::MessageArgs;
use crate::contract;
use crate::storage::{
    BlobPath, ErrorKind, StorageArgs, poison_queue_name, validate_container_name,
    validate_queue_name,
};
use crate::worker::echo::Echo;
use crate::worker::envelope::Envelope;

/// Enqueue every input blob that has no current output.
///
/// "Current" is the worker's own rule ([`contract::is_current`]), judged under the same
/// reducer options, so give `backfill` the options (flags or `ROLLQ_*`) the workers run with.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// Container holding the inputs.
    #[arg(long, env = "ROLLQ_CONTAINER")]
    pub container: String,
    /// Queue to enqueue to (created if missing).
    #[arg(long, env = "ROLLQ_QUEUE")]
    pub queue: String,
    /// Only inputs whose names start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Where the worker writes outputs (default: the input container).
    #[arg(long, env = "ROLLQ_OUTPUT_CONTAINER")]
    pub output_container: Option<String>,
    /// List what would be enqueued without sending anything, then the orphaned outputs
    /// (made by rollq for an input whose output is now elsewhere; never deleted).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub message: MessageArgs,
    #[command(flatten)]
    pub reducer: ReducerArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Queue inspection.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// `rollq queue ...`
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Send message texts verbatim (they never expire) and print their ids.
    Send(SendArgs),
    /// Create a queue and its poison queue `<queue>-poison` if missing.
    Create(QueueTarget),
    /// Approximate and visible message counts of a queue and its poison queue.
    Stats(QueueTarget),
}

/// `rollq queue send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Queue to send to (created if missing).
    #[arg(long, env = "ROLLQ_QUEUE")]
    pub queue: String,
    /// Base64-encode each text before sending (what Azure Functions' queue trigger expects
    /// by default).
    #[arg(long)]
    pub base64: bool,
    /// Message texts, each sent as one message exactly as given. `-` reads one message per
    /// line from stdin (blank lines are skipped). Put `--` before a text that starts with `-`.
    #[arg(required = true, value_name = "TEXT")]
    pub texts: Vec<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The poison queue `<queue>-poison`.
#[derive(Debug, clap::Args)]
pub struct PoisonArgs {
    #[command(subcommand)]
    pub command: PoisonCommand,
}

/// `rollq poison ...`
#[derive(Debug, clap::Subcommand)]
pub enum PoisonCommand {
    /// Show the first poison messages (peek: at most 32, nothing is changed).
    List(QueueTarget),
    /// Move poison messages back to the main queue: the original text, without the worker's
    /// envelope (verbatim copies are sent as they are).
    Requeue(RequeueArgs),
}

/// A queue and the connection to reach it.
#[derive(Debug, clap::Args)]
pub struct QueueTarget {
    /// The main queue (its poison queue is `<queue>-poison`).
    #[arg(long, env = "ROLLQ_QUEUE")]
    pub queue: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `rollq poison requeue`.
#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub target: QueueTarget,
    /// Move at most this many (default: the poison queue's count when the command starts,
    /// so messages poisoned again meanwhile are not cycled forever).
    #[arg(long)]
    pub max: Option<u64>,
}

/// Runs `rollq backfill`.
pub fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        validate_queue_name(&args.queue)?;
        validate_container_name(&args.container)?;
        if let Some(out) = &args.output_container {
            validate_container_name(out)?;
        }
        let spec = args
            .reducer
            .to_spec()
            .map_err(anyhow::Error::msg)
            .context("invalid reducer options")?;
        let conn = connected(&args.storage).await?;
        let explain = explained(&conn);
        let queue = conn.queues.queue(&args.queue);
        let listed = conn
            .blobs
            .list(&args.container, &args.prefix)
            .await
            .map_err(&explain)?;
        let inputs = listed.iter().filter(|b| contract::is_input(&b.name)).count();
        if !args.dry_run {
            queue.create_if_missing().await.map_err(&explain)?;
        }
        let (mut enqueued, mut current) = (0u64, 0u64);
        let output_container = args.output_container.as_deref();
        for input in listed.iter().filter(|b| contract::is_input(&b.name)) {
            let source = BlobPath::new(&args.container, &input.name);
            let out = contract::output_path(&source, output_container);
            let needs = match conn.blobs.properties(&out).await {
                Err(e) if e.kind == ErrorKind::NotFound => true,
                Err(e) => return Err(explain(e)),
                Ok(p) => !contract::is_current(&p.metadata, &source, &input.etag, &spec),
            };
            if !needs {
                current += 1;
                continue;
            }
            if args.dry_run {
                println!("would enqueue {}", input.name);
            } else {
                queue
                    .send(&args.message.body(&args.container, &input.name))
                    .await
                    .map_err(&explain)?;
                tracing::info!(blob = %input.name, "enqueued");
            }
            enqueued += 1;
        }
        let verb = if args.dry_run {
            "would enqueue"
        } else {
            "enqueued"
        };
        println!(
            "{verb} {enqueued} of {inputs} inputs to queue {} ({current} already have a current output)",
            args.queue
        );
        if args.dry_run {
            // Outputs the name rule no longer leads to (see `docs/worker.md`, migration): listed
            // for the operator, never deleted. Beside the inputs that is the listing above;
            // under `--output-container`, the old rule wrote `OUT/<name>`, so list OUT under
            // the same prefix.
            let candidates = match output_container {
                None => listed,
                Some(out) => conn
                    .blobs
                    .list(out, &args.prefix)
                    .await
                    .map_err(&explain)?,
            };
            let out_container = output_container.unwrap_or(&args.container);
            let mut orphans = 0u64;
            for item in candidates.iter().filter(|b| contract::is_output(&b.name)) {
                let path = BlobPath::new(out_container, &item.name);
                let metadata = match conn.blobs.properties(&path).await {
                    Ok(p) => p.metadata,
                    // Deleted since the listing: nothing to report.
                    Err(e) if e.kind == ErrorKind::NotFound => continue,
                    Err(e) => return Err(explain(e)),
                };
                if let Some(source) = contract::orphaned_source(&path, &metadata, output_container) {
                    println!(
                        "orphan {path} (made from {source}, whose output is now {})",
                        contract::output_path(&source, output_container)
                    );
                    orphans += 1;
                }
            }
            println!("{orphans} orphaned outputs (rollq never deletes them)");
        }
        Ok(())
    })
}

/// Runs `rollq queue ...`.
pub fn queue(args: QueueArgs) -> anyhow::Result<()> {
    match args.command {
        QueueCommand::Send(a) => {
            // Everything is read and checked before the first request, so a bad line sends
            // nothing rather than half a batch.
            let texts = message_texts(&a.texts, a.base64, std::io::stdin().lock())?;
            runtime()?.block_on(send(&a, &texts))
        }
        QueueCommand::Create(t) => runtime()?.block_on(create(t)),
        QueueCommand::Stats(t) => runtime()?.block_on(stats(t)),
    }
}

/// The largest message text Azure accepts (64 KiB, after any base64 encoding).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Expands `-` into stdin's lines, applies base64, and checks every text against what the
/// service accepts.
fn message_texts(
    args: &[String],
    base64: bool,
    stdin: impl std::io::BufRead,
) -> anyhow::Result<Vec<String>> {
    if args.iter().filter(|a| *a == "-").count() > 1 {
        bail!("`-` (read stdin) may be given only once");
    }
    let mut stdin = Some(stdin);
    let mut texts = Vec::new();
    for arg in args {
        if arg != "-" {
            texts.push((arg.clone(), format!("argument {}", texts.len() + 1)));
            continue;
        }
        let input = stdin.take().expect("`-` appears once");
        for (i, line) in input.lines().enumerate() {
            let line = line.context("reading messages from stdin")?;
            // `lines` strips `\n` and `\r\n`; a blank line is a separator, not a message.
            if !line.trim().is_empty() {
                texts.push((line, format!("stdin line {}", i + 1)));
            }
        }
    }
    if texts.is_empty() {
        bail!("no messages to send (stdin had only blank lines)");
    }
    texts
        .into_iter()
        .map(|(text, origin)| {
            let text = if base64 {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(text)
            } else {
                text
            };
            check_message(&text).with_context(|| format!("{origin} cannot be sent"))?;
            Ok(text)
        })
        .collect()
}

/// Rejects texts the service would refuse: over 64 KiB, or characters XML 1.0 cannot carry
/// (the message travels in an XML body).
fn check_message(text: &str) -> anyhow::Result<()> {
    if text.len() > MAX_MESSAGE_BYTES {
        bail!(
            "the message is {} bytes; a queue message holds at most {MAX_MESSAGE_BYTES} \
             (put the payload in a blob and send its name)",
            text.len()
        );
    }
    let not_xml = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    if let Some(c) = text.chars().find(|&c| not_xml(c)) {
        bail!(
            "the message contains the control character {c:?}, which a queue message cannot \
             carry as text; use --base64"
        );
    }
    Ok(())
}

async fn send(a: &SendArgs, texts: &[String]) -> anyhow::Result<()> {
    validate_queue_name(&a.queue)?;
    let conn = connected(&a.storage).await?;
    let explain = explained(&conn);
    let q = conn.queues.queue(&a.queue);
    q.create_if_missing().await.map_err(&explain)?;
    // One at a time, in order: a reader sees the messages in the order given, and a failure
    // reports exactly how many went out.
    for (i, text) in texts.iter().enumerate() {
        match q.send(text).await {
            Ok(id) => println!("{id}"),
            Err(e) => {
                return Err(explain(e).context(format!(
                    "sent {i} of {} message(s) to queue {} before this failure",
                    texts.len(),
                    a.queue
                )));
            }
        }
    }
    tracing::info!(queue = %a.queue, count = texts.len(), "sent");
    Ok(())
}

async fn create(t: QueueTarget) -> anyhow::Result<()> {
    validate_queue_name(&t.queue)?;
    let pname = poison_queue_name(&t.queue);
    let conn = connected(&t.storage).await?;
    let explain = explained(&conn);
    conn.queues
        .queue(&t.queue)
        .create_if_missing()
        .await
        .map_err(&explain)?;
    conn.queues
        .queue(&pname)
        .create_if_missing()
        .await
        .map_err(&explain)?;
    println!("queues {} and {pname} exist", t.queue);
    Ok(())
}

async fn stats(t: QueueTarget) -> anyhow::Result<()> {
    validate_queue_name(&t.queue)?;
    let conn = connected(&t.storage).await?;
    let explain = explained(&conn);
    let q = conn.queues.queue(&t.queue);
    let approx = q.approximate_count().await.map_err(&explain)?;
    let visible = q.peek(32).await.map_err(&explain)?.len();
    let pname = poison_queue_name(&t.queue);
    let poison = match conn.queues.queue(&pname).approximate_count().await {
        Ok(n) => n.to_string(),
        Err(e) if e.kind == ErrorKind::NotFound => "0 (queue does not exist)".to_owned(),
        Err(e) => return Err(explain(e)),
    };
    println!("queue: {}", t.queue);
    println!("approximate_messages: {approx}");
    let more = if visible == 32 { "+" } else { "" };
    println!("visible_messages: {visible}{more} (peek, at most 32)");
    println!("poison_queue: {pname}");
    println!("poison_approximate_messages: {poison}");
    Ok(())
}

/// Runs `rollq poison ...`.
pub fn poison(args: PoisonArgs) -> anyhow::Result<()> {
    match args.command {
        PoisonCommand::List(t) => runtime()?.block_on(list(t)),
        PoisonCommand::Requeue(r) => runtime()?.block_on(requeue(r)),
    }
}

fn age(t: Option<SystemTime>) -> String {
    t.and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "?".to_owned())
}

async fn list(t: QueueTarget) -> anyhow::Result<()> {
    validate_queue_name(&t.queue)?;
    let conn = connected(&t.storage).await?;
    let explain = explained(&conn);
    let pname = poison_queue_name(&t.queue);
    let p = conn.queues.queue(&pname);
    let msgs = match p.peek(32).await {
        Ok(m) => m,
        Err(e) if e.kind == ErrorKind::NotFound => {
            println!("poison queue {pname} does not exist (nothing was ever poisoned)");
            return Ok(());
        }
        Err(e) => return Err(explain(e)),
    };
    let total = p.approximate_count().await.map_err(&explain)?;
    println!(
        "poison queue {pname}: {total} message(s), showing {} visible",
        msgs.len()
    );
    for m in msgs {
        println!(
            "{}",
            list_line(
                &m.id.to_string(),
                &age(m.inserted_on),
                m.dequeue_count,
                &m.text
            )
        );
    }
    Ok(())
}

/// One `poison list` line: id, age, the poison queue's own dequeue count, why (from the
/// worker's envelope; `verbatim copy` when there is none) and the original text. Debug
/// formatting escapes control characters, so one message stays one line.
fn list_line(id: &str, age: &str, dequeued: u64, text: &str) -> String {
    let e = Envelope::open(text);
    let why = match &e.poison {
        Some(p) => format!(
            "reason {} ({}, {:?})\tdeliveries {} attempts {} released {} deferred {}\tfirst failure {} last {}\tworker {}",
            p.reason,
            p.class,
            p.error,
            p.deliveries,
            p.attempts,
            p.released,
            p.deferred,
            p.first_failure,
            p.last_failure,
            p.worker
        ),
        None => "reason ? (verbatim copy)".to_owned(),
    };
    // Producer text: escaped, bounded, and without SAS signatures (requeue sends it whole).
    format!(
        "{id}\tage {age}\tdequeued {dequeued}\t{why}\t{}",
        Echo(&e.original)
    )
}

async fn requeue(r: RequeueArgs) -> anyhow::Result<()> {
    let t = &r.target;
    validate_queue_name(&t.queue)?;
    let conn = connected(&t.storage).await?;
    let explain = explained(&conn);
    let pname = poison_queue_name(&t.queue);
    let p = conn.queues.queue(&pname);
    let main = conn.queues.queue(&t.queue);
    let limit = match r.max {
        Some(n) => n,
        None => match p.approximate_count().await {
            Ok(n) => n,
            Err(e) if e.kind == ErrorKind::NotFound => 0,
            Err(e) => return Err(explain(e)),
        },
    };
    if limit > 0 {
        main.create_if_missing().await.map_err(&explain)?;
    }
    let mut moved = 0u64;
    while moved < limit {
        let want = (limit - moved).min(32) as u8;
        let batch = p
            .receive(want, Duration::from_secs(120))
            .await
            .map_err(&explain)?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            // Send first, then delete: a crash in between leaves a copy in the poison
            // queue (visible again after the timeout), never a lost message.
            // The producer's text, unwrapped from the poison envelope: the worker sees the
            // message as it was first sent, with no counts carried over.
            main.send(&Envelope::open(&m.text).original)
                .await
                .map_err(&explain)?;
            p.delete(&m.id, &m.pop_receipt).await.map_err(&explain)?;
            moved += 1;
        }
    }
    println!("requeued {moved} message(s) from {pname} to {}", t.queue);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn message_texts_expand_stdin_in_place_and_skip_blank_lines() {
        let stdin = std::io::Cursor::new("x\r\n\n  \ny z\n");
        let got = message_texts(&strings(&["a", "-", "b"]), false, stdin).unwrap();
        assert_eq!(got, ["a", "x", "y z", "b"]);
        let got = message_texts(&strings(&["t.csv"]), true, std::io::empty()).unwrap();
        assert_eq!(got, ["dC5jc3Y="]);
    }

    #[test]
    fn list_lines_show_why_and_the_original() {
        let copy = r#"{"$rollq":{"poison":{"reason":"too_many_attempts","error":"failed 5 times","class":"message","deliveries":6,"attempts":5,"released":1,"deferred":0,"first_failure":"2026-01-01T00:00:00Z","last_failure":"2026-01-01T00:05:00Z","worker":"pod-1"}},"body":"t.csv"}"#;
        let line = list_line("m1", "1m", 1, copy);
        for part in [
            "reason too_many_attempts (message, \"failed 5 times\")",
            "deliveries 6 attempts 5 released 1 deferred 0",
            "first failure 2026-01-01T00:00:00Z last 2026-01-01T00:05:00Z",
            "worker pod-1",
            "\"t.csv\"",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        let line = list_line("m2", "1m", 1, "a\nb.csv");
        assert!(line.contains("verbatim copy"), "{line}");
        assert!(line.ends_with(r#""a\nb.csv""#), "{line}");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn message_texts_name_the_bad_one() {
        let stdin = std::io::Cursor::new("ok\nnul\0here\n");
        let err = message_texts(&strings(&["-"]), false, stdin).unwrap_err();
        assert!(format!("{err:#}").contains("stdin line 2"), "{err:#}");
        let err = message_texts(&strings(&["-"]), false, std::io::Cursor::new("\n")).unwrap_err();
        assert!(err.to_string().contains("no messages"), "{err}");
        // Exactly at the limit is fine; one byte over is not.
        let max = "a".repeat(MAX_MESSAGE_BYTES);
        assert!(message_texts(std::slice::from_ref(&max), false, std::io::empty()).is_ok());
        let err = message_texts(&[max + "a"], false, std::io::empty()).unwrap_err();
        assert!(format!("{err:#}").contains("argument 1"), "{err:#}");
    }
}

//! Seeded synthetic payment traffic, at the very start of the data flow (it
//! produces what Kafka would carry) and used by the demo, tests and benchmarks.
//!
//! The population: customers with one or two cards, each card with a home
//! country, a spending habit (typical amount, payments per day) and a set of
//! favourite merchants; merchants with a category, a country and terminals.
//! Legitimate payments follow those habits over the days, with a daily rhythm.
//! Three labelled fraud scenarios are mixed in:
//! - `large_amount`: one payment many times the card's usual amount;
//! - `compromised_terminal`: a terminal that, for a few days, serves a stream of
//!   payments from skimmed cards, at a pace far above its usual;
//! - `card_takeover`: a burst of online payments on one card within half an hour,
//!   abroad, from a device and address the card has never used.
//!
//! The same seed and parameters give the same events, byte for byte.

use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::Serialize;
use vigil_core::{Event, Label, Verdict};

/// Generation parameters.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Exact number of events to produce.
    pub events: usize,
    pub cards: usize,
    pub merchants: usize,
    pub days: u32,
    pub start: DateTime<Utc>,
    /// Share of events that belong to a fraud scenario.
    pub fraud_share: f64,
    /// Adds the scenarios models tell apart ([`Scenario::CardTesting`],
    /// [`Scenario::SlowCompromise`], [`Scenario::Imitation`],
    /// [`Scenario::MerchantBustOut`]), confirms about 15% of frauds only
    /// 30 to 75 days later and leaves 3% of frauds labelled genuine. Off, the
    /// events are those of earlier versions for the same seed.
    pub hard: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            events: 100_000,
            cards: 5_000,
            merchants: 400,
            days: 30,
            start: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_default(),
            fraud_share: 0.015,
            hard: false,
        }
    }
}

/// Which fraud scenario an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    LargeAmount,
    CompromisedTerminal,
    CardTakeover,
    /// Hard mode: a stolen card tried with small online payments at many
    /// merchants, then spent.
    CardTesting,
    /// Hard mode: a terminal skimming for weeks, at its victims' usual amounts.
    SlowCompromise,
    /// Hard mode: a taken-over card spent at its own merchants, in its own
    /// country, at its usual amounts.
    Imitation,
    /// Hard mode: a merchant that, after weeks of ordinary trade, charges
    /// many cards it never served online within a day or two, then vanishes.
    MerchantBustOut,
}

impl Scenario {
    /// Every scenario, the plain ones first.
    pub const ALL: [Scenario; 7] = [
        Scenario::LargeAmount,
        Scenario::CompromisedTerminal,
        Scenario::CardTakeover,
        Scenario::CardTesting,
        Scenario::SlowCompromise,
        Scenario::Imitation,
        Scenario::MerchantBustOut,
    ];

    /// Whether only hard mode ([`GenConfig::hard`]) generates it.
    pub fn hard(self) -> bool {
        !matches!(self, Scenario::LargeAmount | Scenario::CompromisedTerminal | Scenario::CardTakeover)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::LargeAmount => "large_amount",
            Scenario::CompromisedTerminal => "compromised_terminal",
            Scenario::CardTakeover => "card_takeover",
            Scenario::CardTesting => "card_testing",
            Scenario::SlowCompromise => "slow_compromise",
            Scenario::Imitation => "imitation",
            Scenario::MerchantBustOut => "merchant_bust_out",
        }
    }
}

/// An event with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub event: Event,
    pub fraud: Option<Scenario>,
    /// When the fraud was confirmed: within a day for about 40% of frauds (an
    /// analyst's verdict), after 2 to 30 days for the rest (a chargeback); in
    /// hard mode, about 15% of frauds only after 30 to 75 days (a late
    /// chargeback or a customer who reads a statement weeks later).
    pub reported_at: Option<DateTime<Utc>>,
}

/// A deterministic report delay for a fraud, from its transaction id, so that
/// adding labels changed no generated event.
fn report_delay_s(transaction_id: &str, hard: bool) -> i64 {
    let h = vigil_core::stable_hash(transaction_id);
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    // The low bits, apart from `u`'s, choose the late ones.
    let late = (h & 0x3ff) as f64 / 1024.0;
    if hard && late < 0.15 {
        30 * 86_400 + (late / 0.15 * 45.0 * 86_400.0) as i64
    } else if u < 0.4 {
        3600 + (u / 0.4 * 23.0 * 3600.0) as i64
    } else {
        2 * 86_400 + ((u - 0.4) / 0.6 * 28.0 * 86_400.0) as i64
    }
}

/// The fraud labels of a generated history, as they would arrive (by report
/// time), each carrying its transaction's entity fields.
pub fn labels(items: &[Labelled]) -> Vec<Label> {
    let mut out: Vec<Label> = items
        .iter()
        .filter_map(|l| {
            let reported_at = l.reported_at?;
            let source =
                if reported_at - l.event.timestamp < chrono::Duration::days(1) { "analyst" } else { "chargeback" };
            Some(Label::for_event(&l.event, Verdict::Fraud, reported_at, Some(source)))
        })
        .collect();
    out.sort_by_key(|l| l.reported_at);
    out
}

const COUNTRIES: [(&str, f64); 6] = [("FR", 0.4), ("DE", 0.2), ("ES", 0.15), ("IT", 0.1), ("GB", 0.1), ("NL", 0.05)];
const FRAUD_COUNTRIES: [&str; 4] = ["BR", "NG", "RU", "VN"];
const MCCS: [&str; 10] = ["5411", "5812", "5541", "5311", "5912", "5999", "4121", "5732", "7011", "5691"];
/// Relative activity per hour of day (payments cluster in the day and evening).
const HOURS: [f64; 24] = [
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 1.0, 1.5, 1.8, 2.0, 2.2, 2.6, 2.4, 2.0, 1.9, 2.0, 2.3, 2.6, 2.5, 2.0, 1.4, 0.9,
    0.5,
];

struct Card {
    id: String,
    customer: usize,
    country: &'static str,
    mean_cents: f64,
    favourites: Vec<usize>,
    device: String,
    ip: String,
}

struct Merchant {
    id: String,
    mcc: &'static str,
    country: &'static str,
    terminals: Vec<String>,
}

/// Picks an index with probability proportional to its weight.
fn pick(rng: &mut ChaCha8Rng, cumulative: &[f64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    cumulative.partition_point(|c| *c <= x).min(cumulative.len().saturating_sub(1))
}

fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; good enough for spending habits.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn cents(c: f64) -> Decimal {
    Decimal::new(c.round().max(50.0) as i64, 2)
}

struct Draft {
    t: DateTime<Utc>,
    amount: Decimal,
    card: usize,
    merchant: usize,
    terminal: Option<String>,
    country: &'static str,
    device_ip: Option<(String, String)>,
    fraud: Option<Scenario>,
}

/// Generates `config.events` events in time order, with their labels.
pub fn generate(config: &GenConfig) -> Vec<Labelled> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let country_cum = cumulative(COUNTRIES.iter().map(|c| c.1));
    let hour_cum = cumulative(HOURS);
    let merchants = merchants(&mut rng, config.merchants.max(1), &country_cum);
    let cards = cards(&mut rng, config.cards.max(1), &merchants, &country_cum);
    let world = World {
        activity_cum: cumulative((0..cards.len()).map(|_| rng.random_range(0.2..4.0))),
        cards,
        merchants,
        hour_cum,
        start: config.start,
        days: i64::from(config.days.max(1)),
    };
    let n_fraud = ((config.events as f64) * config.fraud_share).round() as usize;
    let n_fraud = n_fraud.min(config.events);
    let mut drafts: Vec<Draft> = Vec::with_capacity(config.events);
    // Fraud first, so the legitimate share fills exactly what is left.
    frauds(&mut rng, &world, n_fraud, config.hard, &mut drafts);
    if config.hard {
        // Label noise: some frauds are never reported.
        for d in &mut drafts {
            if rng.random_bool(0.03) {
                d.fraud = None;
            }
        }
    }
    for _ in 0..config.events - n_fraud {
        drafts.push(genuine(&mut rng, &world));
    }
    drafts.sort_by_key(|d| d.t);
    drafts.into_iter().enumerate().map(|(i, d)| labelled(config, i, d, &world)).collect()
}

/// The merchants, cards and habits events are drawn from.
struct World {
    merchants: Vec<Merchant>,
    cards: Vec<Card>,
    /// How often each card pays, cumulated for drawing.
    activity_cum: Vec<f64>,
    hour_cum: Vec<f64>,
    start: DateTime<Utc>,
    days: i64,
}

impl World {
    /// A time on a random day, at an hour drawn from the day's rhythm.
    fn random_time(&self, rng: &mut ChaCha8Rng) -> DateTime<Utc> {
        let day = rng.random_range(0..self.days);
        let hour = pick(rng, &self.hour_cum) as i64;
        self.start + Duration::seconds(day * 86_400 + hour * 3600 + rng.random_range(0..3600))
    }

    /// A card, drawn by its activity.
    fn card(&self, rng: &mut ChaCha8Rng) -> usize {
        pick(rng, &self.activity_cum)
    }
}

fn merchants(rng: &mut ChaCha8Rng, n: usize, country_cum: &[f64]) -> Vec<Merchant> {
    (0..n)
        .map(|i| {
            let n_terminals = rng.random_range(1..=4);
            Merchant {
                id: format!("m{i:05}"),
                mcc: MCCS[rng.random_range(0..MCCS.len())],
                country: COUNTRIES[pick(rng, country_cum)].0,
                terminals: (0..n_terminals).map(|t| format!("t{i:05}-{t}")).collect(),
            }
        })
        .collect()
}

fn cards(rng: &mut ChaCha8Rng, n: usize, merchants: &[Merchant], country_cum: &[f64]) -> Vec<Card> {
    (0..n)
        .map(|i| {
            let country = COUNTRIES[pick(rng, country_cum)].0;
            let local: Vec<usize> = (0..merchants.len()).filter(|m| merchants[*m].country == country).collect();
            let pool = if local.is_empty() { (0..merchants.len()).collect() } else { local };
            let n_fav = rng.random_range(3..=12).min(pool.len());
            Card {
                id: format!("c{i:06}"),
                // Roughly four customers for every five cards.
                customer: i * 4 / 5,
                country,
                mean_cents: rng.random_range(1_000.0..12_000.0),
                favourites: (0..n_fav).map(|_| pool[rng.random_range(0..pool.len())]).collect(),
                device: format!("d{:08x}", rng.random::<u32>()),
                ip: format!(
                    "10.{}.{}.{}",
                    rng.random_range(0..=255u8),
                    rng.random_range(0..=255u8),
                    rng.random_range(1..=254u8)
                ),
            }
        })
        .collect()
}

/// `n` fraud events, the scenarios in turn (three, or seven when `hard`), into `drafts`.
fn frauds(rng: &mut ChaCha8Rng, world: &World, n_fraud: usize, hard: bool, drafts: &mut Vec<Draft>) {
    let mut fraud_left = n_fraud;
    let mut kind = 0usize;
    let kinds = if hard { 7 } else { 3 };
    while fraud_left > 0 {
        let card = world.card(rng);
        let c = &world.cards[card];
        match kind % kinds {
            3..=6 => fraud_left -= hard_fraud(rng, world, kind % kinds, card, fraud_left, drafts),
            0 => {
                let m = c.favourites.first().copied().unwrap_or(0);
                let factor = rng.random_range(8.0..25.0);
                drafts.push(Draft {
                    t: world.random_time(rng),
                    amount: cents(c.mean_cents * factor),
                    card,
                    merchant: m,
                    terminal: world.merchants[m].terminals.first().cloned(),
                    country: c.country,
                    device_ip: None,
                    fraud: Some(Scenario::LargeAmount),
                });
                fraud_left -= 1;
            }
            1 => {
                // A terminal serving skimmed cards for 2 to 4 days.
                let m = rng.random_range(0..world.merchants.len());
                let terminal =
                    world.merchants[m].terminals[rng.random_range(0..world.merchants[m].terminals.len())].clone();
                let start = world.random_time(rng);
                let span_s = rng.random_range(2..=4) * 86_400;
                let n = rng.random_range(15..=40).min(fraud_left);
                for _ in 0..n {
                    let victim = world.card(rng);
                    let t = start + Duration::seconds(rng.random_range(0..span_s));
                    drafts.push(Draft {
                        t,
                        amount: cents(world.cards[victim].mean_cents * rng.random_range(1.5..4.0)),
                        card: victim,
                        merchant: m,
                        terminal: Some(terminal.clone()),
                        country: world.merchants[m].country,
                        device_ip: None,
                        fraud: Some(Scenario::CompromisedTerminal),
                    });
                }
                fraud_left -= n;
            }
            _ => {
                let start = world.random_time(rng);
                let n = rng.random_range(4..=12).min(fraud_left);
                let country = FRAUD_COUNTRIES[rng.random_range(0..FRAUD_COUNTRIES.len())];
                let device = format!("d{:08x}", rng.random::<u32>());
                let ip = format!("203.0.113.{}", rng.random_range(1..=254u8));
                for _ in 0..n {
                    let m = rng.random_range(0..world.merchants.len());
                    drafts.push(Draft {
                        t: start + Duration::seconds(rng.random_range(0..1800)),
                        amount: cents(c.mean_cents * rng.random_range(1.0..4.0)),
                        card,
                        merchant: m,
                        terminal: None,
                        country,
                        device_ip: Some((device.clone(), ip.clone())),
                        fraud: Some(Scenario::CardTakeover),
                    });
                }
                fraud_left -= n;
            }
        }
        kind += 1;
    }
}

/// One of the hard scenarios (`kind` 3 to 6) for `card`, at most `left`
/// events into `drafts`: how many it drew.
fn hard_fraud(
    rng: &mut ChaCha8Rng,
    world: &World,
    kind: usize,
    card: usize,
    left: usize,
    drafts: &mut Vec<Draft>,
) -> usize {
    let c = &world.cards[card];
    let start = world.random_time(rng);
    // Every draft of one scenario: only these vary.
    let mut push = |t, amount, card, merchant: usize, terminal, country, device_ip, scenario| {
        drafts.push(Draft { t, amount, card, merchant, terminal, country, device_ip, fraud: Some(scenario) })
    };
    match kind {
        3 => {
            // Small online tries at many merchants within half an hour, in
            // the card's own country, then two or three real payments.
            let n = rng.random_range(6..=16).min(left);
            let device = format!("d{:08x}", rng.random::<u32>());
            let ip = format!("198.51.100.{}", rng.random_range(1..=254u8));
            for i in 0..n {
                let m = rng.random_range(0..world.merchants.len());
                let amount = match i + 3 >= n {
                    true => cents(c.mean_cents * rng.random_range(2.0..5.0)),
                    false => cents(rng.random_range(50.0..300.0)),
                };
                let t = start + Duration::seconds(rng.random_range(0..1800) + i as i64 * 60);
                let device_ip = Some((device.clone(), ip.clone()));
                push(t, amount, card, m, None, c.country, device_ip, Scenario::CardTesting);
            }
            n
        }
        4 => {
            // A terminal skimming for two to four weeks, a few victims a
            // day among its usual customers, each at their usual amount.
            let m = rng.random_range(0..world.merchants.len());
            let terminals = &world.merchants[m].terminals;
            let terminal = terminals[rng.random_range(0..terminals.len())].clone();
            // Within the history: it starts early enough to end by its last day.
            let span_days = rng.random_range(14..=28).min(world.days);
            let first_day = rng.random_range(0..=world.days - span_days);
            let begin = world.start + Duration::days(first_day);
            let span_s = span_days * 86_400;
            let n = rng.random_range(30..=80).min(left);
            for _ in 0..n {
                let victim = world.card(rng);
                let t = begin + Duration::seconds(rng.random_range(0..span_s));
                let amount = cents(world.cards[victim].mean_cents * (0.5 * normal(rng)).exp());
                let country = world.merchants[m].country;
                push(t, amount, victim, m, Some(terminal.clone()), country, None, Scenario::SlowCompromise);
            }
            n
        }
        6 => {
            // A merchant charging cards it never served, online, at two or
            // three of its own devices, over one or two days, at round
            // amounts a few times each victim's usual; it had traded
            // normally before (its genuine payments are the others').
            let m = rng.random_range(0..world.merchants.len());
            let begin = world.start + Duration::days(rng.random_range(world.days / 2..world.days.max(1)));
            let span_s = rng.random_range(1..=2) * 86_400;
            let devices: Vec<(String, String)> = (0..rng.random_range(2..=3))
                .map(|_| (format!("d{:08x}", rng.random::<u32>()), format!("192.0.2.{}", rng.random_range(1..=254u8))))
                .collect();
            let n = rng.random_range(20..=60).min(left);
            for _ in 0..n {
                let victim = world.card(rng);
                let t = begin + Duration::seconds(rng.random_range(0..span_s));
                let euros = (world.cards[victim].mean_cents * rng.random_range(2.0..6.0) / 100.0).round();
                let amount = cents(euros * 100.0);
                let device_ip = Some(devices[rng.random_range(0..devices.len())].clone());
                let country = world.merchants[m].country;
                push(t, amount, victim, m, None, country, device_ip, Scenario::MerchantBustOut);
            }
            n
        }
        _ => {
            // The card's own merchants, country, device and amounts, a few
            // payments over a day.
            let n = rng.random_range(3..=6).min(left);
            for _ in 0..n {
                let m = match c.favourites.is_empty() {
                    true => rng.random_range(0..world.merchants.len()),
                    false => c.favourites[rng.random_range(0..c.favourites.len())],
                };
                let t = start + Duration::seconds(rng.random_range(0..86_400));
                let amount = cents(c.mean_cents * rng.random_range(0.8..1.6));
                let terminal = world.merchants[m].terminals.first().cloned();
                push(t, amount, card, m, terminal, c.country, None, Scenario::Imitation);
            }
            n
        }
    }
}

/// One genuine payment: a card at one of its usual merchants mostly, online
/// or at a terminal.
fn genuine(rng: &mut ChaCha8Rng, world: &World) -> Draft {
    let card = world.card(rng);
    let c = &world.cards[card];
    let m = if c.favourites.is_empty() || rng.random_bool(0.1) {
        rng.random_range(0..world.merchants.len())
    } else {
        c.favourites[rng.random_range(0..c.favourites.len())]
    };
    let online = rng.random_bool(0.3);
    let amount = cents(c.mean_cents * (0.5 * normal(rng)).exp());
    Draft {
        t: world.random_time(rng),
        amount,
        card,
        merchant: m,
        terminal: (!online)
            .then(|| world.merchants[m].terminals[rng.random_range(0..world.merchants[m].terminals.len())].clone()),
        country: if online { world.merchants[m].country } else { c.country },
        device_ip: online.then(|| (c.device.clone(), c.ip.clone())),
        fraud: None,
    }
}

/// The `i`th event in time order, with its label.
fn labelled(config: &GenConfig, i: usize, d: Draft, world: &World) -> Labelled {
    let c = &world.cards[d.card];
    let m = &world.merchants[d.merchant];
    let (device_id, ip) = match d.device_ip {
        Some((dv, ip)) => (Some(dv), Some(ip)),
        None => (None, None),
    };
    let event = Event {
        transaction_id: format!("tx-{:x}-{i:08}", config.seed),
        timestamp: d.t,
        amount: d.amount,
        currency: "EUR".into(),
        card_id: Some(c.id.clone()),
        account_id: Some(format!("a{:06}", c.customer)),
        customer_id: Some(format!("u{:06}", c.customer)),
        merchant_id: Some(m.id.clone()),
        channel: Some(if d.terminal.is_some() { "pos" } else { "ecom" }.into()),
        terminal_id: d.terminal,
        device_id,
        mcc: Some(m.mcc.into()),
        country: Some(d.country.into()),
        ip,
        attributes: Default::default(),
    };
    let reported_at = d
        .fraud
        .map(|_| event.timestamp + chrono::Duration::seconds(report_delay_s(&event.transaction_id, config.hard)));
    Labelled { event, fraud: d.fraud, reported_at }
}

/// Output formats of `vigil gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

#[derive(Serialize)]
struct CsvRow<'a> {
    transaction_id: &'a str,
    timestamp: String,
    amount: String,
    currency: &'a str,
    card_id: &'a str,
    account_id: &'a str,
    customer_id: &'a str,
    merchant_id: &'a str,
    terminal_id: &'a str,
    device_id: &'a str,
    mcc: &'a str,
    country: &'a str,
    ip: &'a str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_fraud: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraud_scenario: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraud_reported_at: Option<String>,
}

/// The report time of a fraud as history files write it.
fn reported_text(l: &Labelled) -> String {
    l.reported_at.map_or(String::new(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Writes events; with `inline_labels`, each record also carries `is_fraud` and
/// `fraud_scenario` (a labelled history, not a valid event stream).
pub fn write(out: impl Write, items: &[Labelled], format: Format, inline_labels: bool) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    match format {
        Format::JsonLines => {
            for l in items {
                let mut v = serde_json::to_value(&l.event).map_err(std::io::Error::other)?;
                if inline_labels {
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("is_fraud".into(), l.fraud.is_some().into());
                        obj.insert("fraud_scenario".into(), l.fraud.map(|s| s.name()).into());
                        if l.reported_at.is_some() {
                            obj.insert("fraud_reported_at".into(), reported_text(l).into());
                        }
                    }
                }
                serde_json::to_writer(&mut out, &v).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            for l in items {
                let e = &l.event;
                let s = |o: &'_ Option<String>| -> String { o.clone().unwrap_or_default() };
                let (card, account, customer, merchant, terminal, device, mcc, country, ip, channel) = (
                    s(&e.card_id),
                    s(&e.account_id),
                    s(&e.customer_id),
                    s(&e.merchant_id),
                    s(&e.terminal_id),
                    s(&e.device_id),
                    s(&e.mcc),
                    s(&e.country),
                    s(&e.ip),
                    s(&e.channel),
                );
                w.serialize(CsvRow {
                    transaction_id: &e.transaction_id,
                    timestamp: e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    amount: e.amount.to_string(),
                    currency: &e.currency,
                    card_id: &card,
                    account_id: &account,
                    customer_id: &customer,
                    merchant_id: &merchant,
                    terminal_id: &terminal,
                    device_id: &device,
                    mcc: &mcc,
                    country: &country,
                    ip: &ip,
                    channel: &channel,
                    is_fraud: inline_labels.then_some(l.fraud.is_some()),
                    fraud_scenario: if inline_labels { Some(l.fraud.map_or("", |s| s.name())) } else { None },
                    fraud_reported_at: inline_labels.then(|| reported_text(l)),
                })
                .map_err(std::io::Error::other)?;
            }
            w.flush()?;
        }
    }
    out.flush()
}

/// Writes `transaction_id,is_fraud,fraud_scenario` for every event.
pub fn write_labels(out: impl Write, items: &[Labelled]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["transaction_id", "is_fraud", "fraud_scenario"]).map_err(std::io::Error::other)?;
    for l in items {
        let fraud = if l.fraud.is_some() { "true" } else { "false" };
        w.write_record([l.event.transaction_id.as_str(), fraud, l.fraud.map_or("", |s| s.name())])
            .map_err(std::io::Error::other)?;
    }
    w.flush()
}

/// The shapes of [`rule_set`]'s rules, in the order they cycle: rule `i` has
/// shape `i % 5`. Benchmarks that translate the set into another engine's
/// format follow this list.
pub const RULE_SHAPES: [&str; 5] = [
    "amount > 100 + i",
    "card_count_10m >= i % 10 + 1 and channel == \"ecom\"",
    "country in [\"BR\", \"NG\", \"X{i}\"] and amount >= i % 50",
    "card_sum_24h + amount > 1000 + 10 i",
    "terminal_count_1h >= i % 7 + 2 or ip_count_1h >= i % 5 + 3",
];

/// A synthetic rule file of `n` rules in the shapes analysts write (amount
/// thresholds, velocity with a channel, list membership, money arithmetic and
/// `or`s; see [`RULE_SHAPES`]), over the demo pipeline's fields and features:
/// used to measure rule evaluation at sizes beyond the shipped rules.
pub fn rule_set(n: usize) -> String {
    (0..n)
        .map(|i| {
            let cond = match i % 5 {
                0 => format!("amount > {}", 100 + i),
                1 => format!("card_count_10m >= {} and channel == \"ecom\"", i % 10 + 1),
                2 => format!("country in [\"BR\", \"NG\", \"X{i}\"] and amount >= {}", i % 50),
                3 => format!("card_sum_24h + amount > {}", 1000 + i * 10),
                _ => format!("terminal_count_1h >= {} or ip_count_1h >= {}", i % 7 + 2, i % 5 + 3),
            };
            format!("rule r{i} when {cond} then review R{i} score 1\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> GenConfig {
        GenConfig { seed, events: 5_000, cards: 300, merchants: 40, days: 5, ..GenConfig::default() }
    }

    #[test]
    fn exact_count_in_time_order_with_unique_ids() {
        let items = generate(&small(1));
        assert_eq!(items.len(), 5_000);
        assert!(items.windows(2).all(|w| w[0].event.timestamp <= w[1].event.timestamp));
        let ids: std::collections::HashSet<_> = items.iter().map(|l| &l.event.transaction_id).collect();
        assert_eq!(ids.len(), 5_000);
    }

    #[test]
    fn seeded_and_reproducible() {
        assert_eq!(generate(&small(7)), generate(&small(7)));
        assert_ne!(generate(&small(7)), generate(&small(8)));
    }

    #[test]
    fn every_scenario_is_present_and_valid() {
        let items = generate(&small(3));
        let fraud = items.iter().filter(|l| l.fraud.is_some()).count();
        assert_eq!(fraud, 75);
        for s in [Scenario::LargeAmount, Scenario::CompromisedTerminal, Scenario::CardTakeover] {
            assert!(items.iter().any(|l| l.fraud == Some(s)), "{s:?} missing");
        }
        // Every generated event passes the event contract.
        for l in &items {
            Event::from_json(&l.event.to_json()).unwrap();
        }
    }

    #[test]
    fn writes_json_lines_and_csv() {
        let items = generate(&GenConfig { events: 20, ..small(1) });
        let mut jsonl = Vec::new();
        write(&mut jsonl, &items, Format::JsonLines, false).unwrap();
        let first = jsonl.split(|b| *b == b'\n').next().unwrap();
        assert_eq!(Event::from_json(first).unwrap(), items[0].event);
        let mut csv_out = Vec::new();
        write(&mut csv_out, &items, Format::Csv, true).unwrap();
        let text = String::from_utf8(csv_out).unwrap();
        assert!(text.starts_with("transaction_id,timestamp,amount,currency,"));
        assert!(text.lines().next().unwrap().ends_with("is_fraud,fraud_scenario,fraud_reported_at"));
        assert_eq!(text.lines().count(), 21);
    }

    #[test]
    fn frauds_are_reported_later_and_labels_come_in_report_order() {
        let items = generate(&small(3));
        let labels = labels(&items);
        let frauds = items.iter().filter(|l| l.fraud.is_some()).count();
        assert!(frauds > 0);
        assert_eq!(labels.len(), frauds, "one label per fraud");
        assert!(labels.windows(2).all(|w| w[0].reported_at <= w[1].reported_at));
        for l in &items {
            match (l.fraud, l.reported_at) {
                (Some(_), Some(at)) => {
                    let delay = at - l.event.timestamp;
                    assert!(delay >= Duration::hours(1) && delay <= Duration::days(30), "{delay}");
                }
                (None, None) => {}
                other => panic!("a report time goes with a fraud: {other:?}"),
            }
        }
        let quick = labels.iter().filter(|l| l.source.as_deref() == Some("analyst")).count();
        assert!(quick > 0 && quick < labels.len(), "some analyst verdicts, some chargebacks");
        assert!(labels.iter().all(|l| l.fields.contains_key(&vigil_core::EventField::CardId)));
    }

    #[test]
    fn hard_mode_adds_the_scenarios_models_tell_apart_and_some_unreported_frauds() {
        let plain = generate(&GenConfig { events: 20_000, days: 40, ..small(4) });
        let hard = generate(&GenConfig { events: 20_000, days: 40, hard: true, ..small(4) });
        let scenarios = |items: &[Labelled]| {
            let mut seen: Vec<&str> = items.iter().filter_map(|l| l.fraud.map(Scenario::name)).collect();
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        assert_eq!(scenarios(&plain), ["card_takeover", "compromised_terminal", "large_amount"]);
        let all = [
            "card_takeover",
            "card_testing",
            "compromised_terminal",
            "imitation",
            "large_amount",
            "merchant_bust_out",
            "slow_compromise",
        ];
        assert_eq!(scenarios(&hard), all);
        let frauds = |items: &[Labelled]| items.iter().filter(|l| l.fraud.is_some()).count();
        // 300 fraud events drawn, about 3% of them left unreported.
        assert!(frauds(&plain) == 300 && (275..300).contains(&frauds(&hard)), "{}", frauds(&hard));
        // A slow compromise spans weeks at one terminal.
        let slow: Vec<_> = hard.iter().filter(|l| l.fraud == Some(Scenario::SlowCompromise)).collect();
        let terminal = slow[0].event.terminal_id.clone();
        let times: Vec<_> =
            slow.iter().filter(|l| l.event.terminal_id == terminal).map(|l| l.event.timestamp).collect();
        assert!(*times.last().unwrap() - times[0] > Duration::days(10), "{times:?}");
        let end = small(4).start + Duration::days(40);
        assert!(hard.iter().filter(|l| l.fraud == Some(Scenario::SlowCompromise)).all(|l| l.event.timestamp < end));
        // A bust-out: one merchant, many cards, online, within two days.
        let bust: Vec<_> = hard.iter().filter(|l| l.fraud == Some(Scenario::MerchantBustOut)).collect();
        let merchant = bust[0].event.merchant_id.clone();
        let one: Vec<_> = bust.iter().filter(|l| l.event.merchant_id == merchant).collect();
        let cards: std::collections::HashSet<_> = one.iter().map(|l| &l.event.card_id).collect();
        assert!(one.len() >= 10 && cards.len() * 10 >= one.len() * 8, "{} payments, {} cards", one.len(), cards.len());
        assert!(one.iter().all(|l| l.event.channel.as_deref() == Some("ecom") && l.event.amount.fract().is_zero()));
        assert!(one.last().unwrap().event.timestamp - one[0].event.timestamp <= Duration::days(2));
        // Some frauds are confirmed weeks late; none in plain mode.
        let delays = |items: &[Labelled]| -> Vec<Duration> {
            items.iter().filter_map(|l| Some(l.reported_at? - l.event.timestamp)).collect()
        };
        let late = delays(&hard).iter().filter(|d| **d > Duration::days(30)).count();
        assert!((20..70).contains(&late), "{late} of {}", delays(&hard).len());
        assert!(delays(&hard).iter().all(|d| *d <= Duration::days(75)));
        assert!(delays(&plain).iter().all(|d| *d <= Duration::days(30)));
    }
}

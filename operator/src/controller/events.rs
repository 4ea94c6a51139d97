//! Kubernetes Events about `StorageCluster`s, published through kube-runtime's [`Recorder`]
//! with one difference: an Event with a new note is a new Event.
//!
//! The Recorder folds an Event into the series of an earlier one (a PATCH raising its count)
//! when type, reason, action, reporter and objects are the same, and it keeps the earlier
//! Event's note: the note is not part of its key. So `HealStep` for step 2 after `HealStep` for
//! step 1 would show step 1's text twice. [`Events`] keeps, per (object, type, reason, action),
//! the note it published last and the Recorder holding that Event: the same note again joins the
//! series (a real repeat, counted), a different note goes through a fresh Recorder, which
//! creates a new Event with that note.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// How long a series stays open: kube-runtime's Recorder forgets an Event after six minutes,
/// so a repeat after that is a new Event anyway.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// The longest note the API server accepts (`events.k8s.io/v1`: 1 kB).
const MAX_NOTE_BYTES: usize = 1024;

/// What folds Events into one series, as the Recorder sees it (the reporter is always ours).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    object: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    warning: bool,
    reason: String,
    action: String,
}

/// The last Event published under a key.
struct Latest {
    note: Option<String>,
    recorder: Recorder,
    at: Instant,
}

/// Publishes Events as this operator (its [`Reporter`]).
pub struct Events {
    client: Client,
    reporter: Reporter,
    latest: Mutex<HashMap<Key, Latest>>,
}

impl Events {
    /// Events published through `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Events {
        Events {
            client,
            reporter,
            latest: Mutex::default(),
        }
    }

    /// Publishes `event` about `regarding`: a repeat of the last Event with the same type,
    /// reason and action (note included) joins its series, anything else is a new Event. A
    /// note longer than the API server accepts is cut at a character boundary.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let note = event.note.as_deref().map(truncate);
        let key = Key {
            object: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
                regarding.kind.clone(),
            ),
            warning: event.type_ == EventType::Warning,
            reason: event.reason.clone(),
            action: event.action.clone(),
        };
        let recorder = {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            latest.retain(|_, l| now.duration_since(l.at) < SERIES_TTL);
            match latest.get_mut(&key) {
                Some(l) if l.note.as_deref() == note => {
                    l.at = now;
                    l.recorder.clone()
                }
                _ => {
                    let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                    latest.insert(
                        key,
                        Latest {
                            note: note.map(str::to_string),
                            recorder: recorder.clone(),
                            at: now,
                        },
                    );
                    recorder
                }
            }
        };
        let event = Event {
            type_: event.type_,
            reason: event.reason.clone(),
            note: note.map(str::to_string),
            action: event.action.clone(),
            secondary: event.secondary.clone(),
        };
        recorder.publish(&event, regarding).await
    }
}

/// `note` cut to at most [`MAX_NOTE_BYTES`] bytes, at a character boundary.
fn truncate(note: &str) -> &str {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

#[cfg(test)]
mod tests {
    use http::Method;
    use kube::Resource;
    use serde_json::Value;

    use super::*;
    use crate::controller::fixtures::{cluster, mock_client};

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: Some(note.to_string()),
            action: "Heal".to_string(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn each_note_is_its_own_event_and_a_repeat_joins_its_series() {
        let (client, mut verifier) = mock_client();
        let events = Events::new(client, "mend-operator-test".into());
        let regarding = cluster("demo", 3).object_ref(&());
        let server = tokio::spawn(async move {
            let mut seen: Vec<(Method, Value)> = Vec::new();
            for _ in 0..4 {
                let request = verifier.next().await;
                assert!(request.path.starts_with(EVENTS), "{}", request.path);
                seen.push((request.method.clone(), request.body.clone()));
                request.echo();
            }
            (seen, verifier)
        });
        for (reason, note) in [
            ("HealStep", "step 1 of 3: remove 22"),
            ("HealStep", "step 2 of 3: back up 22"),
            ("HealStep", "step 2 of 3: back up 22"),
            ("HealStep", "step 3 of 3: wipe 22"),
        ] {
            events
                .publish(&event(reason, note), &regarding)
                .await
                .expect("published");
        }
        drop(events);
        let (seen, verifier) = server.await.expect("scenario");
        verifier.no_more_requests().await;
        let methods: Vec<&Method> = seen.iter().map(|(m, _)| m).collect();
        assert_eq!(
            methods,
            [&Method::POST, &Method::POST, &Method::PATCH, &Method::POST]
        );
        assert_eq!(seen[0].1["note"], "step 1 of 3: remove 22");
        assert_eq!(seen[1].1["note"], "step 2 of 3: back up 22");
        // The repeat raises the count of step 2's Event, whose note it keeps.
        assert_eq!(seen[2].1["note"], "step 2 of 3: back up 22");
        assert_eq!(seen[2].1["series"]["count"], 2);
        assert_eq!(seen[2].1["metadata"]["name"], seen[1].1["metadata"]["name"]);
        assert_eq!(seen[3].1["note"], "step 3 of 3: wipe 22");
    }

    #[test]
    fn a_long_note_is_cut_at_a_character_boundary_within_the_limit() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(600);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.len() >= MAX_NOTE_BYTES - 1);
        assert!(long.starts_with(cut));
    }
}

//! The subscriber thread: every room's messages, each room's in offset
//! order, exactly once, gaps repaired from the room's stream; and the
//! private messages for this node's members.

use super::MessageKind;
use super::{
    ClusterEvent, Delivery, HISTORY_LOST, LINK_BACK, LINK_LOST, RETRY, Target, channel, connect,
    decode, epoch_key, node_channel, offsets_key, post, stream_key,
};
use crate::protocol::ConnId;
use crate::{Mailbox, Message};
use std::sync::mpsc::SyncSender;

/// The subscriber thread: every room channel; each room's messages posted
/// to the loop in offset order, exactly once, gaps repaired from the
/// room's stream; resubscribes after a failure (and checks every room it
/// knows for what it missed). `subscribed` hears once the first
/// subscription stands.
pub(super) fn run(
    url: &Target,
    node: &str,
    history: usize,
    mailbox: &Mailbox<ClusterEvent>,
    subscribed: &SyncSender<()>,
) {
    let pattern = channel("*");
    let prefix = channel("");
    let mut order = Order::default();
    let mut lost = false;
    let mut loaded = false;
    let mut down = false;
    loop {
        let (Some(mut connection), Some(mut commands)) =
            (connect(url, &mut down), connect(url, &mut down))
        else {
            std::thread::sleep(RETRY);
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        let subscribed_all = pubsub
            .psubscribe(&pattern)
            .and_then(|()| pubsub.subscribe(node_channel(node)));
        if let Err(e) = subscribed_all {
            tracing::warn!(error = %e, "Redis: cannot subscribe");
            std::thread::sleep(RETRY);
            continue;
        }
        // Once, before serving: every room's last lines, so that whoever
        // joins gets them, also after every server restarted.
        if !loaded && history > 0 {
            if !order.load_history(&mut commands, history, mailbox) {
                return;
            }
            loaded = true;
        }
        let _ = subscribed.try_send(());
        // What was published while we were not listening.
        if !order.catch_up(&mut commands, mailbox) {
            return;
        }
        if std::mem::take(&mut lost) && !post(mailbox, None, ClusterEvent::Notice(LINK_BACK)) {
            return;
        }
        loop {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "Redis: subscription lost");
                    break;
                }
            };
            let channel = message.get_channel_name();
            let Some(room) = channel.strip_prefix(&prefix) else {
                if let Some((to, msg)) = private(message.get_payload_bytes())
                    && !post(mailbox, None, ClusterEvent::Private { to, msg })
                {
                    return;
                }
                continue;
            };
            let Some((epoch, delivery)) = decode(room, message.get_payload_bytes()) else {
                tracing::warn!(channel, "Redis: a message sockline did not write");
                continue;
            };
            if !order.receive(&epoch, delivery, &mut commands, mailbox) {
                return;
            }
        }
        lost = true;
        if !post(mailbox, None, ClusterEvent::Notice(LINK_LOST)) {
            return;
        }
        std::thread::sleep(RETRY);
    }
}

/// Where each room's order stands on this node.
#[derive(Default)]
struct Order {
    epoch: Option<String>,
    /// The last offset delivered, per room.
    last: std::collections::HashMap<String, u64>,
}

/// A stream entry as XRANGE returns it: its id, and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

impl Order {
    /// Delivers `delivery` in its place: drops one seen before, first
    /// repairs a gap before it. False once the loop is gone.
    fn receive(
        &mut self,
        epoch: &str,
        delivery: Delivery,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        if self.epoch.as_deref() != Some(epoch) {
            let restarted = self.epoch.is_some();
            self.epoch = Some(epoch.to_owned());
            self.last.clear();
            if restarted && !post(mailbox, None, ClusterEvent::Notice(HISTORY_LOST)) {
                return false;
            }
        }
        let offset = delivery.offset;
        let last = self.last.get(&delivery.room).copied();
        if last.is_some_and(|last| offset <= last) {
            return true; // seen before (a repair got it first)
        }
        if let Some(last) = last
            && offset > last + 1
            && !self.repair(&delivery.room, last, offset - 1, commands, mailbox)
        {
            return false;
        }
        self.last.insert(delivery.room.clone(), offset);
        post(mailbox, None, ClusterEvent::Delivered(delivery))
    }

    /// Reads offsets `after + 1 ..= upto` of `room` back from its stream
    /// and delivers them.
    fn repair(
        &mut self,
        room: &str,
        after: u64,
        upto: u64,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let entries: redis::RedisResult<Vec<Entry>> = redis::cmd("XRANGE")
            .arg(stream_key(room))
            .arg(format!("{}-1", after + 1))
            .arg(format!("{upto}-1"))
            .query(commands);
        let entries = entries.unwrap_or_else(|e| {
            tracing::warn!(
                room,
                from = after + 1,
                upto,
                error = %e,
                "Redis: cannot repair offsets"
            );
            Vec::new()
        });
        let mut next = after + 1;
        for (_, fields) in entries {
            let Some((_, message)) = fields.into_iter().find(|(name, _)| name == "m") else {
                continue;
            };
            let Some((_, delivery)) = decode(room, &message) else {
                continue;
            };
            if delivery.offset < next {
                continue;
            }
            next = delivery.offset + 1;
            self.last.insert(room.to_owned(), delivery.offset);
            if !post(mailbox, None, ClusterEvent::Delivered(delivery)) {
                return false;
            }
        }
        if next <= upto {
            tracing::warn!(
                room,
                from = next,
                upto,
                "Redis: offsets are gone from the stream"
            );
            self.last.insert(room.to_owned(), upto);
        }
        true
    }

    /// Reads the last `history` messages of every room's stream and
    /// delivers them (there are no members yet: they become each room's
    /// history); live messages follow from there.
    fn load_history(
        &mut self,
        commands: &mut redis::Connection,
        history: usize,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let prefix = stream_key("");
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(commands);
            let Ok((next, found)) = page else {
                tracing::warn!("Redis: cannot list the rooms' history");
                return true;
            };
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for key in keys {
            let Some(room) = key.strip_prefix(&prefix) else {
                continue;
            };
            // Newest first, a page at a time, until `history` lines (the
            // stream holds notices too).
            let (mut lines, mut newest, mut end) = (Vec::new(), None, "+".to_owned());
            while lines.len() < history {
                let page: redis::RedisResult<Vec<Entry>> = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(256)
                    .query(commands);
                let page = page.unwrap_or_default();
                let Some((last_id, _)) = page.last() else {
                    break;
                };
                end = format!("({last_id}");
                for (_, fields) in page {
                    let message = fields.into_iter().find(|(name, _)| name == "m");
                    let Some((epoch, delivery)) = message.and_then(|(_, m)| decode(room, &m))
                    else {
                        continue;
                    };
                    self.epoch.get_or_insert(epoch);
                    newest.get_or_insert(delivery.offset);
                    if delivery.kind == MessageKind::Line && lines.len() < history {
                        lines.push(delivery);
                    }
                }
            }
            if let Some(newest) = newest {
                self.last.insert(room.to_owned(), newest);
            }
            for delivery in lines.into_iter().rev() {
                if !post(mailbox, None, ClusterEvent::Delivered(delivery)) {
                    return false;
                }
            }
        }
        true
    }

    /// After (re)subscribing: each known room's current offset, and what
    /// was missed before it.
    fn catch_up(
        &mut self,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let epoch: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(epoch_key()).query(commands);
        if let Ok(Some(epoch)) = epoch
            && self.epoch.as_ref().is_some_and(|known| *known != epoch)
        {
            // Restarted empty: counting starts again.
            self.epoch = Some(epoch);
            self.last.clear();
            return post(mailbox, None, ClusterEvent::Notice(HISTORY_LOST));
        }
        let rooms: Vec<(String, u64)> = self.last.iter().map(|(r, o)| (r.clone(), *o)).collect();
        for (room, last) in rooms {
            let now: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
                .arg(offsets_key())
                .arg(&room)
                .query(commands);
            if let Ok(Some(now)) = now
                && now > last
                && !self.repair(&room, last, now, commands, mailbox)
            {
                return false;
            }
        }
        true
    }
}

/// A private message: `from \t line`, for member `from` of this node.
fn private(payload: &[u8]) -> Option<(ConnId, Message)> {
    let tab = payload.iter().position(|&b| b == b'\t')?;
    let to = std::str::from_utf8(&payload[..tab]).ok()?.parse().ok()?;
    Some((ConnId::unpack(to), Message::from(&payload[tab + 1..])))
}

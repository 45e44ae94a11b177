//! The translated side of a shard's translated flows (SPEC §9), by slot:
//! chunks aligned with the slab's that exist only while a translated flow
//! lives in them, so untranslated flows carry nothing for NAT but a null
//! pointer per chunk.

use super::shard::CHUNK;
use crate::nat::Translation;
use crate::packet::rewrite::FlowRewrite;

/// A translated flow's side: its translation and its packets' rewrites
/// ([`crate::nat::rewrites`]), kept apart from the [`Translation`] so that
/// it stays what the state file records, but beside it (one lookup).
struct Slot {
    translation: Translation,
    rewrites: [FlowRewrite; 2],
}

/// The translations of one slab chunk's slots.
struct Chunk {
    // A fixed length, so that a slot's index in it needs no bounds check.
    slots: Box<[Option<Slot>; CHUNK]>,
    live: u32,
}

/// Slot-indexed translations and their checksum deltas.
#[derive(Default)]
pub(super) struct Translations {
    chunks: Vec<Option<Chunk>>,
}

impl Translations {
    /// The translation in `slot`.
    #[inline]
    pub(super) fn get(&self, slot: usize) -> Option<&Translation> {
        self.slot(slot).map(|s| &s.translation)
    }

    #[inline]
    fn slot(&self, slot: usize) -> Option<&Slot> {
        self.chunks.get(slot / CHUNK)?.as_ref()?.slots[slot % CHUNK].as_ref()
    }

    /// The translation in `slot` and its rewrite of `way` (0 or 1).
    #[inline]
    pub(super) fn get_with_rewrite(
        &self,
        slot: usize,
        way: usize,
    ) -> Option<(&Translation, &FlowRewrite)> {
        let s = self.slot(slot)?;
        Some((&s.translation, &s.rewrites[way & 1]))
    }

    /// Puts `translation` with its `rewrites` in `slot`.
    pub(super) fn set(
        &mut self,
        slot: usize,
        translation: Translation,
        rewrites: [FlowRewrite; 2],
    ) {
        if self.chunks.len() <= slot / CHUNK {
            self.chunks.resize_with(slot / CHUNK + 1, || None);
        }
        let chunk = self.chunks[slot / CHUNK].get_or_insert_with(|| Chunk {
            slots: Box::new([const { None }; CHUNK]),
            live: 0,
        });
        let new = Slot {
            translation,
            rewrites,
        };
        if chunk.slots[slot % CHUNK].replace(new).is_none() {
            chunk.live += 1;
        }
    }

    /// Takes the translation out of `slot`, freeing its chunk when it was
    /// the chunk's last.
    pub(super) fn take(&mut self, slot: usize) -> Option<Translation> {
        let cell = self.chunks.get_mut(slot / CHUNK)?;
        let chunk = cell.as_mut()?;
        let taken = chunk.slots[slot % CHUNK].take()?;
        chunk.live -= 1;
        if chunk.live == 0 {
            *cell = None;
        }
        Some(taken.translation)
    }

    /// Forgets the chunks from `chunks` on (the slab gave them back).
    pub(super) fn truncate(&mut self, chunks: usize) {
        self.chunks.truncate(chunks);
        self.chunks.shrink_to_fit();
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Option<Chunk>>()
            + self
                .chunks
                .iter()
                .flatten()
                .map(|_| std::mem::size_of::<[Option<Slot>; CHUNK]>())
                .sum::<usize>()
    }
}

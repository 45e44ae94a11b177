//! The translated side of a shard's translated flows (SPEC §9), by slot:
//! chunks aligned with the slab's that exist only while a translated flow
//! lives in them, so untranslated flows carry nothing for NAT but a null
//! pointer per chunk.

use super::table::CHUNK;
use crate::nat::Translation;
use crate::packet::rewrite::Deltas;

/// The translations of one slab chunk's slots.
struct Chunk {
    slots: Box<[Option<Translation>]>,
    /// Each slot's checksum deltas ([`crate::nat::deltas`]), kept apart so
    /// that [`Translation`] stays what the state file records.
    deltas: Box<[[Deltas; 2]]>,
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
        self.chunks.get(slot / CHUNK)?.as_ref()?.slots[slot % CHUNK].as_ref()
    }

    /// The translation in `slot` and its checksum deltas of `way` (0 or 1).
    #[inline]
    pub(super) fn get_with_deltas(
        &self,
        slot: usize,
        way: usize,
    ) -> Option<(&Translation, Deltas)> {
        let chunk = self.chunks.get(slot / CHUNK)?.as_ref()?;
        let i = slot % CHUNK;
        Some((
            chunk.slots.get(i)?.as_ref()?,
            *chunk.deltas.get(i)?.get(way)?,
        ))
    }

    /// Puts `translation` with its `deltas` in `slot`.
    pub(super) fn set(&mut self, slot: usize, translation: Translation, deltas: [Deltas; 2]) {
        if self.chunks.len() <= slot / CHUNK {
            self.chunks.resize_with(slot / CHUNK + 1, || None);
        }
        let chunk = self.chunks[slot / CHUNK].get_or_insert_with(|| Chunk {
            slots: (0..CHUNK).map(|_| None).collect(),
            deltas: vec![[Deltas::default(); 2]; CHUNK].into_boxed_slice(),
            live: 0,
        });
        chunk.deltas[slot % CHUNK] = deltas;
        if chunk.slots[slot % CHUNK].replace(translation).is_none() {
            chunk.live += 1;
        }
    }

    /// Takes the translation out of `slot`, freeing its chunk when it was
    /// the chunk's last.
    pub(super) fn take(&mut self, slot: usize) -> Option<Translation> {
        let cell = self.chunks.get_mut(slot / CHUNK)?;
        let chunk = cell.as_mut()?;
        let translation = chunk.slots[slot % CHUNK].take()?;
        chunk.live -= 1;
        if chunk.live == 0 {
            *cell = None;
        }
        Some(translation)
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
                .map(|c| {
                    c.slots.len() * std::mem::size_of::<Option<Translation>>()
                        + c.deltas.len() * std::mem::size_of::<[Deltas; 2]>()
                })
                .sum::<usize>()
    }
}
